"""Workdirs, sweeps and reports in a bucket, as a Cloud TPU pod keeps them.

No bucket is reachable here, so `bucket` serves gs://bucket from a local directory:
etils' own test hook (`epath.testing.mock_epath`) routes every epath operation on a
gs:// path there, and orbax's tensorstore arrays, which bypass epath, go there through
tensorstore's file driver in place of its GCS one. Everything else is the code a pod
runs: the gs:// URLs flow through vgg_jax unchanged, orbax takes its GCS paths (commit
files, not renames) and the lock its advisory one. A plain `open` or `os.makedirs` of
such a URL would land in the working directory (as ./gs:/bucket/...), which the tests
check stays empty. What this cannot show is the real service's behaviour: latency,
eventual listings, credentials.
"""

import ast
import contextlib
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
from unittest import mock

import jax
import pytest
from etils.epath import gpath, testing
from orbax.checkpoint._src.path import gcs_utils

from conftest import FASHION, ROOT, needs_fashion_mnist
from conftest import SWEEP_TINY as TINY
from vgg_jax import evaluate, lock, paths, sweep, train

BUCKET = "gs://bucket"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bucket as tmp_path/bucket, with the working directory in tmp_path/cwd."""
  disk = str(tmp_path / "bucket")
  os.makedirs(disk)
  os.makedirs(tmp_path / "cwd")
  monkeypatch.chdir(tmp_path / "cwd")

  def local(path):
    path = os.fspath(path)
    if path.startswith("gs://"):
      assert path == BUCKET or path.startswith(BUCKET + "/"), path
      return disk + path[len(BUCKET) :]
    return path

  def url(path):
    return BUCKET + path[len(disk) :] if path.startswith(disk) else path

  def walk(original, top, **kwargs):
    for root, dirs, files in original(local(top), **kwargs):
      yield url(root), dirs, files

  one = lambda original, path, *args, **kwargs: original(local(path), *args, **kwargs)
  two = lambda original, a, b, *args, **kwargs: original(local(a), local(b), *args, **kwargs)
  with contextlib.ExitStack() as stack:
    stack.enter_context(
      testing.mock_epath(
        **dict.fromkeys(
          ["open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat"],
          one,
        ),
        **dict.fromkeys(["rename", "replace", "copy"], two),
        glob=lambda original, pattern: [url(p) for p in original(local(pattern))],
        walk=walk,
      )
    )
    # epath would hand gs:// to TensorFlow's GCS client whenever TensorFlow is installed.
    stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))
    stack.enter_context(
      mock.patch.object(
        gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": local(path)}
      )
    )
    stack.enter_context(
      mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    )
    yield pathlib.Path(disk)
  assert not os.listdir(tmp_path / "cwd"), "a bucket path was written as a local one"


def test_the_path_helpers_write_whole_files_and_append_in_a_bucket(bucket):
  assert not paths.is_local(f"{BUCKET}/run") and paths.is_local("workdirs/run")
  assert paths.join(BUCKET, "run", "A") == f"{BUCKET}/run/A"
  assert paths.absolute(f"{BUCKET}/run") == f"{BUCKET}/run"
  assert paths.absolute("run") == os.path.join(os.getcwd(), "run")
  paths.Path(BUCKET, "run").mkdir(parents=True)
  paths.write_text(f"{BUCKET}/run/config.json", "{}")
  paths.append_text(f"{BUCKET}/run/metrics.jsonl", "1\n")
  paths.append_text(f"{BUCKET}/run/metrics.jsonl", "2\n")
  assert (bucket / "run" / "metrics.jsonl").read_text() == "1\n2\n"
  assert sorted(os.listdir(bucket / "run")) == ["config.json", "metrics.jsonl"]


def test_a_bucket_s_lock_is_advisory_and_names_its_holder(bucket):
  workdir = f"{BUCKET}/run"
  with lock.workdir_lock(workdir, "train"):
    assert json.loads((bucket / "run" / "lock").read_text())["pid"] == os.getpid()
    with pytest.raises(lock.Locked, match=rf"{workdir} is in use by train \(pid {os.getpid()} "):
      with lock.workdir_lock(workdir, "eval"):
        pass
  assert not (bucket / "run").exists()  # created for the lock, left empty: gone with it

  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  holder = dict(host=socket.gethostname(), pid=dead.pid, purpose="train", since="then")
  (bucket / "run").mkdir()
  (bucket / "run" / "lock").write_text(json.dumps(holder))
  with lock.workdir_lock(workdir, "eval"):  # a dead process of this host: taken over
    assert json.loads((bucket / "run" / "lock").read_text())["purpose"] == "eval"

  (bucket / "run" / "lock").write_text(json.dumps(dict(holder, host="elsewhere")))
  with pytest.raises(
    lock.Locked,
    match=rf"locked by train \(pid {dead.pid} on elsewhere, since then\); if that process "
    rf"is gone, clear the stale lock with: gcloud storage rm {workdir}/lock$",
  ):
    with lock.workdir_lock(workdir, "train"):
      pass


@needs_fashion_mnist
def test_a_sweep_in_a_bucket_trains_resumes_evaluates_and_reports(bucket, sweep_cache, capsys):
  """A run stopped at step 2, then the sweep that resumes it to step 4 and evaluates it,
  then `launch.py eval --configured` and `launch.py report`, all with the root gs://."""
  import launch

  root = f"{BUCKET}/sweep"
  (run,) = sweep.expand(
    [
      dict(spec, overrides=TINY)
      for spec in sweep.paper_chain(
        (("A", "256"),), [0], scales={"256": "32"}, extra=",quick,backend=numpy"
      )
    ]
  )
  workdir, disk = f"{root}/{run.name}", bucket / "sweep" / run.name
  # Programs another test of this worker compiled would come from memory, not the cache.
  train._COMPILED.clear()  # pylint: disable=protected-access
  evaluate.forward_program.cache_clear()
  jax.clear_caches()
  sweep.enable_compilation_cache(root)
  first = sweep.run_config(run, FASHION, root)
  first.optim.max_steps = 2
  train.train_and_evaluate(first, workdir)

  assert sweep.run_local([run], FASHION, root, log=print) == {run.name: "done"}
  assert "resumed from step 2" in "".join(capsys.readouterr())
  losses = [r["step"] for r in json_lines(disk / "metrics.jsonl") if "loss" in r]
  assert losses == [2, 4]  # each logged step once (every other step)
  assert sorted(os.listdir(disk / "configs")) == ["0.json", "2.json"]
  assert json.loads((disk / "config.json").read_text())["optim"]["max_steps"] == 4
  events = sorted((disk / "tensorboard").iterdir())
  assert len(events) == 2 and all(e.stat().st_size for e in events)  # one per attempt
  assert {"sweep_done.json", "sweep_evaluated.json", "eval", "checkpoints"} <= set(os.listdir(disk))
  assert "lock" not in os.listdir(disk)
  assert os.listdir(bucket / "sweep" / "jax_cache")
  assert f"| {run.name} | done |" in sweep.status_table([run], root)

  results = sorted(os.listdir(disk / "eval"))
  (disk / "eval" / results[0]).unlink()
  launch.main(launch.parse_flags(["launch.py", "eval", f"--workdir={workdir}", "--configured"]))
  assert sorted(os.listdir(disk / "eval")) == results
  assert f"{workdir}/eval/{results[0]}" in capsys.readouterr().out
  assert "4" in os.listdir(disk / "checkpoints")

  launch.main(launch.parse_flags(["launch.py", "report", root]))
  printed = capsys.readouterr().out
  assert printed.startswith((bucket / "sweep" / "report" / "tables.md").read_text())
  assert f"{root}/report/curves/{run.name}.png" in printed
  assert (bucket / "sweep" / "report" / "curves" / f"{run.name}.png").read_bytes()[:4] == (
    b"\x89PNG"
  )
  table3 = (bucket / "sweep" / "report" / "table3.csv").read_text().splitlines()
  assert len(table3) == 2 and table3[1].startswith("glorot 32px,A,32,")


def json_lines(path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_tpu_backend_puts_every_path_of_its_commands_in_the_bucket():
  """`launch.py sweep --backend tpu --dry_run` of the paper's Table 3 with a gs:// root
  and tfds data_dir: each workdir, warm start and data_dir is in the bucket, and the only
  other paths are the checkout's (--repo) code and the hosts' Python (--python)."""
  repo, python = "/home/user/vgg_jax", "/home/user/venv/bin/python"
  out = subprocess.run(
    [
      sys.executable,
      "launch.py",
      "sweep",
      "--config=experiments/paper.py:seeds=1,data_dir=gs://bucket/tfds",
      "--workdir=gs://bucket/run",
      "--backend=tpu",
      "--tpu=pod",
      "--zone=us-central2-b",
      f"--repo={repo}",
      f"--python={python}",
      "--dry_run",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "local path" not in out.stderr
  commands = [line for line in out.stdout.splitlines() if line.startswith("gcloud ")]
  assert len(commands) == len(sweep.load_sweep(f"{ROOT}/experiments/paper.py")[1])
  data, warm = set(), 0
  for command in commands:
    (remote,) = [a.split("=", 1)[1] for a in shlex.split(command) if a.startswith("--command=")]
    for arg in shlex.split(remote.replace(";", " ; ")):
      value = arg.split("=", 1)[-1]
      if arg.startswith("--config="):
        file, _, spec = value.partition(":")
        assert file == f"{repo}/experiments/paper.py"
        data.update(v for k, _, v in (t.partition("=") for t in spec.split(",")) if k == "data_dir")
      elif arg.startswith(("--workdir=", "--config.warm_start.workdir=")):
        assert value.startswith("gs://bucket/run/"), arg
        warm += arg.startswith("--config.warm_start")
      elif "/" in value:
        assert value in (python, f"{repo}/launch.py"), arg
  assert data == {"gs://bucket/tfds"} and warm


# The calls that reach files by the local disk alone, and the places allowed to make them:
# (file, enclosing function or "<module>", call). Everything else goes through
# vgg_jax.paths (tested above on a bucket).
LOCAL_ONLY = {
  # the repository's own code: experiments/*.py, launch.py, the package's data_stats.json
  ("vgg_jax/config.py", "<module>", "os.path.join"),
  ("vgg_jax/config.py", "<module>", "os.path.dirname"),
  ("vgg_jax/config.py", "<module>", "os.path.abspath"),
  ("vgg_jax/config.py", "load_experiment_module", "os.path.join"),
  ("vgg_jax/config.py", "load_experiment_module", "os.path.basename"),
  ("vgg_jax/data/core.py", "<module>", "os.path.join"),
  ("vgg_jax/data/core.py", "<module>", "os.path.dirname"),
  ("vgg_jax/sweep.py", "<module>", "os.path.join"),
  ("vgg_jax/sweep.py", "<module>", "os.path.dirname"),
  ("vgg_jax/sweep.py", "<module>", "os.path.abspath"),
  ("vgg_jax/sweep.py", "load_sweep", "os.path.abspath"),
  ("launch.py", "sweep_flags", "os.path.dirname"),
  ("launch.py", "sweep_flags", "os.path.abspath"),
  # the checkout's paths on a cluster's hosts, in the commands it is given
  ("vgg_jax/sweep.py", "cluster_commands", "os.path.dirname"),
  ("vgg_jax/sweep.py", "cluster_commands", "os.path.join"),
  ("vgg_jax/sweep.py", "cluster_commands", "os.path.relpath"),
  # the lock's flock on a local workdir (a bucket's lock goes through vgg_jax.paths)
  ("vgg_jax/lock.py", "_open_locked", "os.open"),
  ("vgg_jax/lock.py", "_open_locked", "os.stat"),
  ("vgg_jax/lock.py", "_acquire", "os.path.join"),
  ("vgg_jax/lock.py", "release", "os.unlink"),
}
FILE_CALLS = ("open", "io.open", "gzip.open", "pathlib.Path")
FILE_MODULES = ("os.path.", "glob.", "shutil.")
OS_FILE_CALLS = {
  f"os.{name}"
  for name in (
    "open makedirs mkdir listdir scandir walk remove unlink rmdir rename replace stat "
    "chdir removedirs"
  ).split()
}


def file_calls(source: str) -> set[tuple[str, str]]:
  """(enclosing function or "<module>", dotted call) of every call that reaches files
  by itself, however deep in functions."""
  found = set()

  def visit(node, where):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        visit(child, child.name)
        continue
      if isinstance(child, ast.Call):
        name = dotted(child.func)
        if name in FILE_CALLS or name in OS_FILE_CALLS or name.startswith(FILE_MODULES):
          found.add((where, name))
      visit(child, where)

  visit(ast.parse(source), "<module>")
  return found


def dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{dotted(node.value)}.{node.attr}"
  return ""


def test_the_parser_sees_file_calls_inside_functions():
  source = "import os\ndef f():\n  def g():\n    open(p)\n  os.path.exists(p)\nglob.glob(p)\n"
  assert file_calls(source) == {("g", "open"), ("f", "os.path.exists"), ("<module>", "glob.glob")}


def test_files_are_reached_through_vgg_jax_paths_alone():
  sources = [*pathlib.Path(ROOT, "vgg_jax").rglob("*.py"), pathlib.Path(ROOT, "launch.py")]
  found = {
    (path.relative_to(ROOT).as_posix(), where, call)
    for path in sources
    if path.name != "paths.py" or path.parent.name != "vgg_jax"
    for where, call in file_calls(path.read_text())
  }
  assert found - LOCAL_ONLY == set()
  assert LOCAL_ONLY - found == set(), "an allowed call is gone: drop it from LOCAL_ONLY"
