"""The workdir lock: one holder, named to the next comer; a dead holder's lock handled."""

import json
import os
import socket
import subprocess
import sys

import pytest

from vgg_jax import lock


def test_a_second_holder_is_refused_by_name_and_the_lock_goes_with_its_holder(tmp_path):
  with lock.workdir_lock(str(tmp_path), "train"):
    with pytest.raises(
      lock.Locked,
      match=rf"in use by train \(pid {os.getpid()} on "
      rf"{socket.gethostname()}, since 20\d\d-",
    ):
      with lock.workdir_lock(str(tmp_path), "eval"):
        pass
  assert not os.path.exists(tmp_path / lock.LOCK_FILE)
  with lock.workdir_lock(str(tmp_path), "eval"):  # free again
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["purpose"] == "eval"


def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
  (tmp_path / lock.LOCK_FILE).write_text(
    json.dumps(dict(host=socket.gethostname(), pid=dead_pid(), purpose="train", since="then"))
  )
  with lock.workdir_lock(str(tmp_path), "train"):
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_says_how_to_clear_it(tmp_path):
  (tmp_path / lock.LOCK_FILE).write_text(
    json.dumps(dict(host="elsewhere", pid=1234, purpose="train", since="then"))
  )
  with pytest.raises(
    lock.Locked,
    match=r"locked by train \(pid 1234 on elsewhere, since "
    rf"then\); if that process is gone, clear the stale lock with: rm "
    rf"{tmp_path}/lock$",
  ):
    with lock.workdir_lock(str(tmp_path), "train"):
      pass
  assert (tmp_path / lock.LOCK_FILE).exists()  # left for its owner
