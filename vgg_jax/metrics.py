"""Where metrics go: JSON lines and TensorBoard events in the workdir, and a progress bar.

Only process 0 writes. JSON lines (`metrics.jsonl`, one object per record with `step`)
are what the sweep report reads; TensorBoard (tensorboardX, no TensorFlow needed) is
for looking at curves. A resumed run logs each step once: the records past the step it
resumed from are dropped from the JSON lines, and TensorBoard is told to purge them.
Both go through `vgg_jax.paths`, so a workdir in a bucket works; there TensorBoard's
events reach the bucket when the path library uploads them (at its flushes, at the
latest when the writer closes), and metrics.jsonl is rewritten whole at each record.
"""

import json
import math

import jax
import tqdm

from vgg_jax import paths


class MetricWriter:
  """Appends records for the steps after `start_step` (those of an earlier attempt at
  them are dropped first)."""

  def __init__(self, workdir: str, *, start_step: int, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = paths.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      paths.Path(workdir).mkdir(parents=True, exist_ok=True)
      drop_records_after(self.path, start_step)
      logdir = paths.join(workdir, "tensorboard")
      if not paths.is_local(logdir):
        _events_through_paths(logdir)
      self._tb = SummaryWriter(logdir, purge_step=start_step + 1)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    paths.append_text(self.path, json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return value if not isinstance(value, float) or math.isfinite(value) else str(value)


class _EventFiles:
  """tensorboardX's writer factory for a scheme (gs://, s3://): event files through
  `vgg_jax.paths` rather than tensorboardX's own cloud clients (google-cloud-storage,
  boto3)."""

  def open(self, path):
    return paths.Path(path).open("wb")

  def directory_check(self, path):
    paths.Path(path).mkdir(parents=True, exist_ok=True)


def _events_through_paths(logdir: str):
  from tensorboardX import record_writer

  record_writer.register_writer_factory(logdir.split("://")[0], _EventFiles())


def drop_records_after(path: str, step: int):
  """Keeps the JSON lines of steps <= `step`; rewrites the file whole, or not at all."""
  if not paths.Path(path).exists():
    return
  lines = [line + "\n" for line in paths.Path(path).read_text().splitlines() if line.strip()]
  kept = [line for line in lines if _step(line) <= step]
  if len(kept) < len(lines):
    paths.write_text(path, "".join(kept))


def _step(line: str) -> float:
  """A record's step; a line cut short by a killed process counts as past any step."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError):
    return math.inf


def read_metrics(workdir: str) -> list[dict]:
  path = paths.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
  """A tqdm bar over steps showing loss and images/s; tqdm gives the ETA."""

  def __init__(self, total: int, initial: int, batch_size: int):
    self.batch_size = batch_size
    self.bar = tqdm.tqdm(
      total=total,
      initial=initial,
      unit="step",
      dynamic_ncols=True,
      mininterval=2.0,
      disable=jax.process_index() != 0,
    )

  def update(self, step: int, metrics: dict) -> float:
    """`step` is the number of finished steps; returns images/s, smoothed by tqdm."""
    self.bar.update(step - self.bar.n)
    rate = (self.bar.format_dict["rate"] or 0.0) * self.batch_size
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{rate:.0f}", refresh=False)
    return rate

  def write(self, message: str):
    if jax.process_index() == 0:
      self.bar.write(message)

  def close(self):
    self.bar.close()
