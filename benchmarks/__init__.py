"""Speed measurements of the trainer: `throughput` (the bare train step, beside torchvision)
and `loop_efficiency` (the whole training loop against that step)."""
