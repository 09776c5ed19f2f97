"""The paper's ImageNet recipe (Section 3.1), for one configuration and training scale.

  python launch.py train --config experiments/paper.py:model=A,S=256 --workdir workdirs/A_256
  python launch.py train --config experiments/paper.py:model=D,S=256-512 --workdir ...

Batch 256, SGD momentum 0.9, L2 weight decay 5e-4, dropout 0.5 on fc6/fc7, LR 1e-2
divided by 10 when validation accuracy stops improving (at most 3 times), 74 epochs;
S=256, 384 or [256,512] (`S=256-512`), random 224 crops, flips, PCA colour shift, mean
RGB subtraction. Validation is the centre 224 crop at Q = S (Q = 384 for jittered S,
as Table 3). Needs ImageNet's manual download (tfds `imagenet2012`; `data_dir=`).
Should give Table 3's errors with the paper's chain (B-E warm-started from A, S=384
from S=256): e.g. A/256 29.6% top-1, 10.4% top-5 at Q=256 with dense evaluation.
"""

from vgg_jax import config as config_lib
from vgg_jax import paper
from vgg_jax import sweep as sweep_lib
from vgg_jax.scale import Scale


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(
    arg, model="A", S="256", seed=0, data_dir="", init="paper", runlocal=False
  )
  c = config_lib.base_config()
  c.seed = arg.seed
  c.model.name = arg.model
  c.model.init = arg.init
  s = Scale.parse(arg.S)
  c.data.update(
    name="imagenet2012",
    data_dir=arg.data_dir,
    scale=tuple(s),
    crop=224,
    eval_scale=s.mid,
    eval_crop=224,
  )  # Q = S, or 384 for [256,512]
  c.evaluations = config_lib.paper_evaluations(s)  # on ILSVRC's validation set
  if s == paper.S384:
    c.optim.lr = 1e-3  # S=384 is fine-tuned from S=256 with a lower initial LR
  if arg.runlocal:  # a minute-long smoke run of the same program
    c.model.width = 1 / 16
    c.optim.update(batch_size=16, max_steps=20)
    c.log_every_steps = 5
  return c


def sweep(arg: str = ""):
  """Table 3's runs, chained as in the paper (see `sweep_lib.table3_sweep`), `data_dir=`
  handed to every run (a pod's: a bucket, as its ROOT):
  python launch.py sweep --config THIS_FILE:seeds=3,data_dir=gs://B/tfds --workdir gs://B/run"""
  return sweep_lib.table3_sweep(
    arg, scales=paper.STAND_INS["imagenet2012"], runlocal=False, data_dir=""
  )
