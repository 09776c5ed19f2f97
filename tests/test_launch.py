"""The command lines: each `launch.py` command parses its own flags, and
`python -m vgg_jax.data stats` parses absl flags too."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vgg_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_SPEC = f"{ROOT}/experiments/fashion_mnist.py:smoke"


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def launch(*args: str) -> subprocess.CompletedProcess:
  return run("launch.py", *args)


def flags_listed(text: str) -> set[str]:
  """The flags a --help names at the start of a line: `--name:` or `--[no]name:`."""
  lines = (line.strip() for line in text.splitlines())
  return {line[2:].split(":")[0].removeprefix("[no]") for line in lines if line.startswith("--")}


def refusal(out: subprocess.CompletedProcess, status: int) -> str:
  """The one line a refused command prints, after checking its exit status."""
  assert out.returncode == status, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-2000:]
  return lines[0]


def test_help_lists_the_commands():
  out = launch("--help")
  assert out.returncode == 0, out.stderr[-2000:]
  for command in ("summary", "train", "eval", "sweep", "status", "report", "convert", "compile"):
    assert f"\n  {command} " in out.stdout


def test_sweep_help_lists_only_sweep_flags():
  out = launch("sweep", "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("usage: launch.py sweep [flags]")
  listed = flags_listed(out.stdout)
  assert {
    "config",
    "workdir",
    "dry_run",
    "backend",
    "parallel",
    "time_budget_s",
    "tpu",
    "zone",
    "gpus_per_node",
  } <= listed
  assert not listed & {
    "protocol",
    "scales",
    "configured",
    "ensemble",
    "eval_chunk",  # eval's
    "from",
    "to",  # convert's
    "resolution",
    "process_id",
  }  # summary's, train's


def test_train_help_lists_config_and_workdir():
  out = launch("train", "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  assert flags_listed(out.stdout) == {
    "config",
    "workdir",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
  }


def test_a_flag_of_another_command_is_refused(tmp_path):
  line = refusal(launch("eval", f"--workdir={tmp_path}", "--dry_run"), 2)
  assert line == "launch.py eval: Unknown command line flag 'dry_run'"
  assert os.listdir(tmp_path) == []


def test_missing_flags_and_arguments_are_one_line(tmp_path):
  assert "--workdir must have a value" in refusal(
    launch("train", f"--config={ROOT}/experiments/fashion_mnist.py:quick"), 2
  )
  assert "--backend tpu needs --tpu NAME --zone ZONE" in refusal(
    launch("sweep", f"--config={SWEEP_SPEC}", f"--workdir={tmp_path}", "--backend=tpu"), 2
  )
  assert refusal(launch("report"), 2) == "launch.py report: usage: launch.py report [flags] ROOT"
  assert refusal(launch("bogus"), 2).endswith("; no command 'bogus'")
  assert os.listdir(tmp_path) == []


def test_status_reads_config_as_the_sweep_spec(tmp_path):
  """sweep's and status's --config names a sweep(ARG), not a get_config(ARG)."""
  out = launch("status", f"--config={SWEEP_SPEC}", f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| A_S32_seed0 | pending |" in out.stdout
  assert "| B_S32_seed0 | pending | A_S32_seed0 |" in out.stdout


def write_idx(path: str, array: np.ndarray):
  """LeCun's IDX format, gzipped: zeros, the uint8 type code 8, ndim, dims, data."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_data_stats_command_writes_the_training_set_s(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 28, 28), np.uint8)
  for split, (image_file, label_file) in data.FASHION_MNIST_FILES.items():
    write_idx(tmp_path / image_file, images if split == "train" else images[:2])
    write_idx(tmp_path / label_file, np.arange(len(images) if split == "train" else 2) % 10)
  out_file = tmp_path / "stats.json"
  out = run(
    "-m",
    "vgg_jax.data",
    "stats",
    "--dataset=fashion_mnist",
    "--backend=numpy",
    f"--manual_dir={tmp_path}",
    f"--out={out_file}",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  stats = data.load_stats("fashion_mnist", str(out_file))
  np.testing.assert_allclose(stats.mean, [images.mean()], rtol=1e-5)
  np.testing.assert_allclose(stats.eigval, [(images / 255.0).var() * 255], rtol=1e-5)
  entry = json.loads(out_file.read_text())["fashion_mnist"]
  assert entry["computed"] is True and entry["split"] == "train"


@pytest.mark.parametrize(
  "args, says",
  [
    (["stats"], "Flag --dataset must have a value"),
    (["--dataset=fashion_mnist"], "usage: python -m vgg_jax.data stats --dataset NAME"),
  ],
)
def test_data_stats_command_refuses_a_bad_command_line(args, says):
  out = run("-m", "vgg_jax.data", *args)
  assert out.returncode == 1 and says in out.stderr, out.stderr[-2000:]


def test_what_orbax_and_asyncio_print_as_a_save_fails_goes_to_the_workdir_s_log(tmp_path, capsys):
  """launch.LibraryLog: orbax's records, asyncio's and a failing thread's traceback land
  in WORKDIR/orbax.log, not on the terminal; everything else still reaches it."""
  import logging
  import threading

  import launch

  root = logging.getLogger()
  terminal = logging.StreamHandler(sys.stderr)
  root.addHandler(terminal)
  hooks = sys.unraisablehook, threading.excepthook
  library_log = launch.LibraryLog(str(tmp_path))
  try:
    library_log.install()
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    orbax_file = "/site-packages/orbax/checkpoint/_src/futures.py"
    root.handle(
      logging.makeLogRecord(dict(levelno=40, pathname=orbax_file, msg="RESOURCE_EXHAUSTED"))
    )
    logging.getLogger("vgg_jax").error("a record of ours")
    thread = threading.Thread(target=asyncio_closed, name="orbax-save")
    thread.start()
    thread.join()
  finally:
    root.removeHandler(terminal)
    for handler in root.handlers:
      handler.removeFilter(library_log)
    sys.unraisablehook, threading.excepthook = hooks
  log, printed = (tmp_path / launch.LIBRARY_LOG).read_text(), capsys.readouterr().err
  library = ["Task exception was never retrieved", "RESOURCE_EXHAUSTED", "orbax-save"]
  assert all(text in log for text in library), log
  assert "RuntimeError: Event loop is closed" in log and "Traceback" in log
  assert "a record of ours" in printed and "a record of ours" not in log
  assert not any(text in printed for text in library + ["Traceback"]), printed


def asyncio_closed():
  raise RuntimeError("Event loop is closed")
