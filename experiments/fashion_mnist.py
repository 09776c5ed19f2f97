"""The paper's recipe scaled to Fashion-MNIST on a CPU: 28x28 images zero-padded to 32,
32x32 crops (the final feature map is 1x1, so fc6 is a 1x1 conv), a quarter-width net.

  python launch.py train --config experiments/fashion_mnist.py:model=A --workdir workdirs/fm_A
  python launch.py train --config experiments/fashion_mnist.py:quick --workdir /tmp/fm_quick

Training scales map the paper's S in {256, 384, [256, 512]} at crop 224 onto
S in {32, 40, [32, 48]} at crop 32 (`S=32`, `S=40`, `S=32-48`); validation is the centre
32 crop at Q = S (Q = 40 for jittered S). Same optimiser as the paper, batch 128.
Initialisation is Glorot's, the paper's own alternative to pre-training: its N(0, 0.01)
starves nets this narrow (at 1/4 width a 3x3 conv's output shrinks ~3x per layer, so
A's logits start at ~1e-5 and never move). `init=paper` restores it.
`quick` is a half-minute smoke run (300 steps, A at 1/8 width). `holdout=N` validates on
the last N training images instead of the test set; `table5_images=N` is how many test
images Table 5's multi-crop evaluations take; `dtype=bfloat16` computes in bf16;
`manual_dir=D` reads the IDX files from D (a machine without Debian's package).

Should give (A, default arguments, 6 epochs, 2 CPU cores, 2026-11-28): 8.9% top-1 and
0.12% top-5 test error on the 10,000 test images in 6.5 minutes; `quick` about 18-20%.
"""

from vgg_jax import config as config_lib
from vgg_jax import sweep as sweep_lib


TRAIN_IMAGES = 60_000


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(arg, model="A", S="32", width=0.25, epochs=6, seed=0,
                             init="glorot", backend="tfds", dtype="float32", holdout=0,
                             table5_images=2000, quick=False, manual_dir="")
  c = config_lib.base_config()
  c.seed = arg.seed
  c.model.update(name=arg.model, width=arg.width, init=arg.init, dtype=arg.dtype)
  lo, hi = config_lib.parse_scale(arg.S)
  # `holdout=N` validates (LR schedule, best checkpoint) on the last N training images
  # instead of the test set, which the evaluations then see for the first time.
  keep = TRAIN_IMAGES - arg.holdout
  c.data.update(name="fashion_mnist", backend=arg.backend, manual_dir=arg.manual_dir,
                train_split=f"train[:{keep}]" if arg.holdout else "train",
                eval_split=f"train[{keep}:]" if arg.holdout else "test", pad_to=32,
                scale=(lo, hi), crop=32, eval_scale=(lo + hi) // 2,  # Q = S, or 40 for [32, 48]
                eval_crop=32, cache=True, shuffle_buffer=TRAIN_IMAGES)
  c.evaluations = config_lib.paper_evaluations(
      (lo, hi), split="test", table5_split=f"test[:{arg.table5_images}]")
  c.optim.update(batch_size=128, epochs=arg.epochs, plateau_patience=1)
  c.checkpoint.every_steps = 500
  c.log_every_steps = 50
  if arg.quick:
    c.model.width = 1 / 8
    c.optim.max_steps = 300
  return c


def sweep(arg: str = ""):
  """Table 3's runs, chained as in the paper (see `sweep_lib.table3_sweep`), sized for
  2 CPU cores: 1/8 width, 2 epochs (1 for the fine-tuned S=40 and [32,48] runs),
  validated on 5,000 held-out training images, evaluated on the test set
  (docs/ablation_fashion_mnist.md). On a GPU, full width in bf16 without TensorFlow:
  python launch.py sweep --config THIS_FILE:seeds=3 --workdir ROOT --parallel 2
  python launch.py sweep --config THIS_FILE:seeds=3,width=1.0,backend=numpy,dtype=bfloat16 ..."""
  return sweep_lib.table3_sweep(arg, scales=sweep_lib.PAPER_SCALES["fashion_mnist"],
                                finetune_epochs=1, width=0.125, epochs=2, holdout=5000,
                                backend="tfds", dtype="float32", quick=False, manual_dir="")
