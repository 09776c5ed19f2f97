"""One writer per workdir: an exclusive lock held for a run's life.

Two trainers on one workdir (the same command typed twice, a sweep restarted while its
first copy still runs) would overwrite and delete each other's checkpoints. The lock is
the file WORKDIR/lock, held with `flock` (the kernel releases it when its process dies,
however it dies) and naming its holder (host, pid, purpose, start time) for the message
a second writer gets.

A lock left by a dead process is taken over automatically when the holder was on this
host: the free `flock` proves the process is gone (a reused pid cannot fool it). A lock
naming another host is refused even when `flock` is free, because some shared
filesystems do not carry `flock` between hosts; the message says how to clear it. In a
multi-host run process 0 holds the lock and all processes learn whether it got it.

A workdir in a bucket (gs://...) cannot be flocked. There the lock is the same file,
written through `vgg_jax.paths`, and it is advisory, not atomic: it is refused when it
names a live process of this host or any process of another, and taken over when it
names a dead one of this host, but two processes that look at the same moment may both
find it free (object storage offers no exclusive create through the path library;
reading the file back after writing it narrows that window without closing it).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from vgg_jax import paths

LOCK_FILE = "lock"


class Locked(RuntimeError):
  """Another process holds (or may hold) the workdir."""


def holder_info(purpose: str) -> dict:
  return dict(
    host=socket.gethostname(),
    pid=os.getpid(),
    purpose=purpose,
    since=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
  )


def describe(holder: dict) -> str:
  return (
    f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on "
    f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
  )


def _parse(text: str) -> dict:
  text = text.strip()
  try:
    return json.loads(text) if text else {}
  except json.JSONDecodeError:
    return {"purpose": f"unreadable lock {text[:40]!r}"}


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  return _parse(os.read(fd, 4096).decode(errors="replace"))


def _in_use(workdir: str, holder: dict) -> Locked:
  return Locked(f"{workdir} is in use by {describe(holder)}; wait for it to finish, or stop it")


def _elsewhere(workdir: str, path: str, holder: dict) -> Locked:
  remove = {"gs": "gcloud storage rm", "s3": "aws s3 rm"}.get(path.partition("://")[0], "rm")
  return Locked(
    f"{workdir} is locked by {describe(holder)}; if that process is gone, "
    f"clear the stale lock with: {remove} {path}"
  )


def _open_locked(workdir: str, path: str) -> int:
  """An fd of `path` holding its flock, or Locked naming the live holder."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise _in_use(workdir, holder) from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # the holder released (unlinked) it between our open and flock: retry


def _acquire(workdir: str, purpose: str) -> Callable[[], None]:
  """Takes WORKDIR/lock; returns what releases it."""
  if not paths.is_local(workdir):
    return _acquire_advisory(workdir, purpose)
  path = os.path.join(workdir, LOCK_FILE)
  fd = _open_locked(workdir, path)
  holder = _read(fd)
  if holder and holder.get("host") != socket.gethostname():
    os.close(fd)
    raise _elsewhere(workdir, path, holder)
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(holder_info(purpose)).encode())
  os.fsync(fd)

  def release():
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)
    os.close(fd)  # closing drops the flock

  return release


def _acquire_advisory(workdir: str, purpose: str) -> Callable[[], None]:
  """The lock file of a workdir that `flock` cannot reach (see the module's note)."""
  path = paths.Path(workdir) / LOCK_FILE
  holder = _parse(path.read_text()) if path.exists() else {}
  if holder.get("host", socket.gethostname()) != socket.gethostname():
    raise _elsewhere(workdir, str(path), holder)
  if holder and _alive(holder.get("pid")):
    raise _in_use(workdir, holder)
  mine = holder_info(purpose)
  path.write_text(json.dumps(mine))
  holder = _parse(path.read_text())
  if holder != mine:
    raise _in_use(workdir, holder)
  return lambda: path.unlink(missing_ok=True)


def _alive(pid) -> bool:
  """Whether process `pid` runs on this host (a reused pid counts as alive)."""
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, TypeError, ValueError):
    return False
  except PermissionError:  # another user's
    pass
  return True


@contextlib.contextmanager
def workdir_lock(workdir: str, purpose: str) -> Iterator[None]:
  """Holds WORKDIR/lock (created with the workdir if need be) for the block's life;
  raises `Locked` naming the holder when another process has it. Process 0 locks for a
  multi-host run."""
  release, error, created = None, None, False
  if jax.process_index() == 0:
    created = not paths.Path(workdir).exists()
    paths.Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
      release = _acquire(workdir, purpose)
    except Locked as e:
      error = e
  if jax.process_count() > 1:
    got = multihost_utils.process_allgather(np.int32(error is None)).min()
    if not got and error is None:
      error = Locked(f"process 0 could not lock {workdir}; see its message")
  if error is not None:
    if release is not None:
      release()
    raise error
  try:
    yield
  finally:
    if release is not None:
      release()
      if created:
        _remove_if_empty(workdir)


def _remove_if_empty(workdir: str) -> None:
  """A workdir the lock created and nothing filled (a command that failed before its
  first write) goes: no failed command leaves an empty workdir behind."""
  path = paths.Path(workdir)
  with contextlib.suppress(OSError):
    if path.is_dir() and not any(path.iterdir()):
      path.rmdir()
