"""The trainer's profiler switch: `config.profile_steps = (first, last)` traces those
train steps with jax.profiler into WORKDIR/profile.

TensorBoard reads the trace (`tensorboard --logdir WORKDIR/profile`, the profile tab,
with the tensorboard-plugin-profile package), and so does
`python benchmarks/profile_summary.py WORKDIR/profile`, which sums the time per layer
and kind of op on any machine (the step's HLO, written beside the trace, names them).
jax.profiler writes the trace itself, not through `vgg_jax.paths`: whether it reaches a
bucket workdir is JAX's (untested here).
"""

import jax

from vgg_jax import paths


def check_steps(steps) -> None:
  """(0, 0) is off; otherwise 1 <= first <= last."""
  first, last = steps
  if (first, last) != (0, 0) and not 1 <= first <= last:
    raise ValueError(
      f"profile_steps must be (first, last) with 1 <= first <= last, or "
      f"(0, 0) for none; got {tuple(steps)}"
    )


class StepProfiler:
  """Starts a trace before step `first`, once the steps before it have finished on the
  devices, and stops it after step `last` has finished, so the trace holds exactly those
  steps' work (two waits on the devices, nothing else changes in the loop). Beside the
  trace, step_hlo.txt: the step's optimised HLO, which names each traced op by layer."""

  def __init__(self, workdir: str, steps, train_step):
    check_steps(steps)
    self.first, self.last = steps
    self.directory = paths.join(workdir, "profile")
    self.train_step = train_step  # the jitted step, for its HLO
    self.tracing = False

  def step(self, step: int, state, batch) -> None:
    """Call before running `step` on `batch`; `state` is what the previous step returned."""
    if step == self.first and self.first:
      self.write_hlo(state, batch)
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory)
      self.tracing = True
    elif step == self.last + 1:
      self.close(state)

  def write_hlo(self, state, batch) -> None:
    """The step's executable is compiled by now, or is compiled here for the step to use
    (JAX caches it either way), so this costs a trace of the step, not a compilation."""
    if jax.process_index() != 0:
      return
    text = self.train_step.lower(state, batch).compile().as_text()
    paths.Path(self.directory).mkdir(parents=True, exist_ok=True)
    paths.write_text(paths.join(self.directory, "step_hlo.txt"), text)

  def close(self, state=None) -> None:
    """Stops a running trace (the loop ended inside the traced steps)."""
    if self.tracing:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
