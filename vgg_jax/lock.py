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
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

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


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors="replace").strip()
  try:
    return json.loads(text) if text else {}
  except json.JSONDecodeError:
    return {"purpose": f"unreadable lock {text[:40]!r}"}


def _open_locked(path: str) -> int:
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
      raise Locked(
        f"{os.path.dirname(path)} is in use by {describe(holder)}; wait for it "
        f"to finish, or stop it"
      ) from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # the holder released (unlinked) it between our open and flock: retry


def _acquire(workdir: str, purpose: str) -> int:
  path = os.path.join(workdir, LOCK_FILE)
  fd = _open_locked(path)
  holder = _read(fd)
  if holder and holder.get("host") != socket.gethostname():
    os.close(fd)
    raise Locked(
      f"{workdir} is locked by {describe(holder)}; if that process is gone, "
      f"clear the stale lock with: rm {path}"
    )
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(holder_info(purpose)).encode())
  os.fsync(fd)
  return fd


def _release(workdir: str, fd: int):
  with contextlib.suppress(FileNotFoundError):
    os.unlink(os.path.join(workdir, LOCK_FILE))
  os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def workdir_lock(workdir: str, purpose: str) -> Iterator[None]:
  """Holds WORKDIR/lock (created with the workdir if need be) for the block's life;
  raises `Locked` naming the holder when another process has it. Process 0 locks for a
  multi-host run."""
  fd, error = None, None
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    try:
      fd = _acquire(workdir, purpose)
    except Locked as e:
      error = e
  if jax.process_count() > 1:
    got = multihost_utils.process_allgather(np.int32(error is None)).min()
    if not got and error is None:
      error = Locked(f"process 0 could not lock {workdir}; see its message")
  if error is not None:
    if fd is not None:
      _release(workdir, fd)
    raise error
  try:
    yield
  finally:
    if fd is not None:
      _release(workdir, fd)
