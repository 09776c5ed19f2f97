"""The smallest sweep that exercises a real one (device_run's smoke test): A at 1/16
width for 8 steps on 512 Fashion-MNIST images, B warm-started from it, each evaluated
densely on 256 test images. `manual_dir=D` reads the IDX files from D; `steps=N` trains
N steps (a sweep to stop midway)."""

from vgg_jax import config as config_lib


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(arg, model="A", seed=0, manual_dir="", steps=8)
  c = config_lib.experiment_config(
    "fashion_mnist", f"model={arg.model},seed={arg.seed},width=0.0625,epochs=1,backend=numpy"
  )
  c.data.update(manual_dir=arg.manual_dir, train_split="train[:512]", eval_split="test[:256]")
  c.optim.update(batch_size=32, max_steps=arg.steps)
  c.evaluations = ("dense",)
  return c


def sweep(arg: str = ""):
  arg = config_lib.parse_arg(arg, manual_dir="", steps=8)
  extra = f",manual_dir={arg.manual_dir},steps={arg.steps}"
  return [
    dict(name="A_S32_seed0", arg="model=A" + extra),
    dict(name="B_S32_seed0", arg="model=B" + extra, parent="A_S32_seed0"),
  ]
