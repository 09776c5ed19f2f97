"""The one way vgg_jax reaches its files: local paths and cloud URLs (gs://, s3://) alike.

A Cloud TPU pod's hosts share no disk, so its workdirs and data live in a bucket; a GPU
cluster's live on a shared filesystem. etils' `epath` speaks both (orbax and JAX's
compilation cache use it too), so every workdir, config, metrics, evaluation, sweep
marker, report, figure, weight and statistics file is reached through `Path` or the
helpers below. Object storage has no append and no lock: `append_text` rewrites the
object there, and `vgg_jax.lock` falls back to an advisory lock file.

The few places that must stay on this host's disk (the repository's own files, the
lock's `flock`) are listed, with why, in tests/test_storage.py's allow-list.
"""

import os

from etils import epath

Path = epath.Path


class BadFile(ValueError):
  """A file that is not what it should be (truncated, of another format): one line
  naming the file and what is wrong with it."""

  def __init__(self, path, problem):
    first_line = (str(problem).strip().splitlines() or [""])[0]
    super().__init__(f"{os.fspath(path)}: {first_line}")


def is_local(path) -> bool:
  """Whether `path` is on this host's filesystem rather than a URL (gs://bucket/...)."""
  return "://" not in os.fspath(path)


def join(*parts) -> str:
  """The parts as one path string; a URL stays a URL."""
  return os.fspath(Path(*parts))


def absolute(path) -> str:
  """A local path made absolute (without resolving links); a URL as it is."""
  return os.path.abspath(path) if is_local(path) else os.fspath(path)


def write_text(path, text: str) -> None:
  """Writes the file whole or not at all: a full disk or a killed process leaves the old
  one (a sibling .tmp, then a rename; on object storage an object appears once complete)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def append_text(path, text: str) -> None:
  """Adds `text` at the end of the file, creating it if need be. Object storage cannot
  append: there the object is written again whole."""
  path = Path(path)
  if is_local(path):
    with path.open("a") as f:
      f.write(text)
  else:
    path.write_text((path.read_text() if path.exists() else "") + text)
