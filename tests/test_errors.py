"""Bad inputs, one table: each command refuses in one line on stderr naming the cause,
with its exit status (2 for a usage error, 1 for the rest), and leaves the workdir as
it was (absent if it was absent) — nothing is computed or written first."""

import gzip
import os
import shutil

import pytest

from conftest import FASHION, HAS_FASHION_MNIST, NO_FASHION_MNIST, run_launch
from vgg_jax import data, lock

QUICK = f"--config={FASHION}:quick,backend=numpy"
SMOKE = f"--config={FASHION}:smoke"


def idx_copy(tmp_path, name: str, damage) -> str:
  """A manual_dir holding the Debian package's IDX files, `name` replaced by
  damage(its bytes)."""
  directory = tmp_path / "idx"
  shutil.copytree(data.FASHION_MNIST_DIR, directory)
  (directory / name).write_bytes(damage((directory / name).read_bytes()))
  return str(directory)


LABELS = "train-labels-idx1-ubyte.gz"
half_gzip = lambda raw: raw[: len(raw) // 2]  # noqa: E731
half_idx = lambda raw: gzip.compress(gzip.decompress(raw)[: len(gzip.decompress(raw)) // 2])  # noqa: E731


def prepared(tmp_path) -> str:
  """A data_dir in which tfds has prepared Fashion-MNIST already (from the IDX files)."""
  from vgg_jax.data import tfds_backend

  data_dir = str(tmp_path / "tfds")
  tfds_backend.prepared_builder(
    data.default_config(name="fashion_mnist", backend="tfds", data_dir=data_dir)
  )
  return data_dir


def held_sweep_root(root):
  """The root, locked by another sweep for the command's life."""
  return lock.workdir_lock(str(root), "sweep")


# (id, args given tmp_path and the workdir W, exit status, the line's text, needs data)
CASES = [
  ("negative lr", lambda t, w: ["train", QUICK, w, "--config.optim.lr=-1"], 1,
   "config: optim.lr -1.0 must be positive", False),
  ("zero batch", lambda t, w: ["train", QUICK, w, "--config.optim.batch_size=0"], 1,
   "config: optim.batch_size 0 must be at least 1", False),
  ("empty manual_dir, numpy", lambda t, w: ["train", QUICK, w, f"--config.data.manual_dir={t}"],
   1, "config: data.manual_dir: Fashion-MNIST IDX files missing from {t}", False),
  ("empty manual_dir, tfds",
   lambda t, w: ["train", f"--config={FASHION}:quick", w, f"--config.data.manual_dir={t}"],
   1, "config: data.manual_dir: Fashion-MNIST IDX files missing from {t}", False),
  ("missing config file", lambda t, w: ["train", "--config=no/such.py:quick", w], 2,
   "--config=no/such.py:quick: no such file", False),
  ("design typo", lambda t, w: ["sweep", f"{SMOKE[:-1]}", w], 2,
   "unknown config argument 'smok'", False),
  ("missing sweep file", lambda t, w: ["sweep", "--config=no/such.py:smoke", w], 2,
   "--config=no/such.py:smoke: no such file", False),
  ("truncated gzip IDX",
   lambda t, w: ["train", QUICK, w, f"--config.data.manual_dir={idx_copy(t, LABELS, half_gzip)}"],
   1, f"{{t}}/idx/{LABELS}: not a complete gzip file", True),
  ("half-length IDX",
   lambda t, w: ["train", QUICK, w, f"--config.data.manual_dir={idx_copy(t, LABELS, half_idx)}"],
   1, f"{{t}}/idx/{LABELS}: an IDX file cut short: 29996 bytes of data where its header "
   "announces (60000,) (60000 bytes)", True),
  ("manual_dir tfds would not read",
   lambda t, w: ["train", f"--config={FASHION}:quick", w, f"--config.data.data_dir={prepared(t)}",
                 f"--config.data.manual_dir={data.FASHION_MNIST_DIR}"],
   1, f"config: data.manual_dir {data.FASHION_MNIST_DIR} would not be read: fashion_mnist_local "
   "is already prepared in {t}/tfds/fashion_mnist_local/", True),
  ("report, empty root", lambda t, w: ["report", str(t)], 1,
   "no evaluations in {t} (none of ROOT/*/eval/*.json)", False),
  ("report, missing root", lambda t, w: ["report", w.partition("=")[2]], 1,
   "no evaluations in {w}", False),
]  # fmt: skip


@pytest.mark.parametrize(
  "make_args,status,line,needs_data", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_input_is_one_line_and_writes_nothing(tmp_path, make_args, status, line, needs_data):
  if needs_data and not HAS_FASHION_MNIST:
    pytest.skip(NO_FASHION_MNIST)
  workdir = tmp_path / "W"
  args = make_args(tmp_path, f"--workdir={workdir}")
  before = sorted(os.listdir(tmp_path))
  out = run_launch(*args)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == status and len(lines) == 1, out.stderr[-3000:]
  command = args[0]
  assert lines[0].startswith(f"launch.py {command}: "), lines
  assert line.format(t=tmp_path, w=workdir) in lines[0]
  assert sorted(os.listdir(tmp_path)) == before and not workdir.exists()


def test_a_second_sweep_on_a_root_is_refused_before_touching_it(tmp_path):
  root = tmp_path / "R"
  with held_sweep_root(root):
    out = run_launch("sweep", SMOKE, f"--workdir={root}")
    assert sorted(os.listdir(root)) == [lock.LOCK_FILE]
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith(f"launch.py sweep: {root} is in use by sweep (pid {os.getpid()} ")


@pytest.mark.parametrize(
  "source,content", [("torchvision", os.urandom(4096)), ("keras", b"not a model\n")]
)
def test_convert_names_a_file_that_is_not_a_model(tmp_path, source, content):
  path = tmp_path / "weights.bin"
  path.write_bytes(content)
  out = run_launch("convert", f"--from={source}", f"--to={tmp_path / 'out'}", str(path))
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
  kind = {"torchvision": "a torch state dict", "keras": "a Keras model"}[source]
  assert lines[0].startswith(f"launch.py convert: {path}: not {kind}: "), lines
  assert sorted(os.listdir(tmp_path)) == ["weights.bin"]
