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

`size=64` trains on 64x64 crops (S >= 64: the padded 32x32 image upsampled), `batch`,
`steps` (max_steps), `test_images` (evaluate on the first N test images) and `patience`
(epochs without improvement before the LR drops), `plateau_from` (no LR drop before
that epoch) and `drop_at=N` (the LR / 10 after epoch N as well) are the recipe's other
knobs.

Should give (A, default arguments, 6 epochs, 2 CPU cores, 2026-12-06): 9.2% top-1 and
0.13% top-5 test error on the 10,000 test images in 5.3 minutes; `quick` about 18-20%.

Sweeps sized to converge (DESIGNS; `launch.py sweep --config THIS_FILE:gpu --workdir R`):
  gpu    one H200, 57 runs: Table 3's chain (12 runs), He init from scratch (A, B, D, E)
         and 64x64 He (A, B, D), x 3 seeds; half width, bf16, batch 512, 20 epochs (5 to
         fine-tune), device-resident input. No LR drop before epoch 5 (`plateau_from`, our
         choice): with patience 2 from the start, E's LR was cut to 1e-3 at epoch 3,
         during its slow start (val error 56% at epoch 1, 89% at 2), and it ended
         unconverged at 14% (docs/gpu.md); A's first drop came at epoch 10. Measured on
         an H200 (docs/gpu.md, 2026-11-28): 17-21 s a run once compiled, 20-51 s with
         compilation, so about 20 minutes for the 57 runs, not the 2.8 minutes the
         FLOP forecast (20% MFU) gives: these small nets are bound by per-step costs. A
         shorter window gets what `--time_budget_s` lets finish: the chain's S=32 runs
         of every seed first (Table 3's claims, paired by seed), then the He arm, the
         fine-tunings, the 64x64 arm. 3 seeds is the fewest that can decide
         anything: a paired t-interval of about +-2.5 sd of the per-seed difference (t
         4.30, n 3; with 2 seeds t is 12.7, the +-7 points of docs/gpu.md).
  cpu    2 CPU cores in 22 minutes (21.9 measured on idle AVX-512 cores,
         docs/ablation_cpu.md): A, B and D of the chain at S=32, 1/8 width, 3 seeds
         (9 runs), 4 epochs, the last at LR / 10 (`drop_at=3`, our choice: 4 epochs
         are too few for the paper's rule to fire; without it 8 of 9 runs were still
         improving). The training loss is flat over the last epoch in every run. The
         paired differences' std over seeds was 0.67 (B-A) and 0.11 points (D-A), so
         a 3-seed interval is +-1.7 and +-0.27 points.
  depth  the README's first command: cpu's first seed at 2 epochs without the final drop
         (A, B, D), 6.0 minutes on 2 idle Intel Xeon AVX-512 cores (top-1 test error
         A 13.7%, B 12.8%, D 15.9%).
  smoke  the same code paths in about half a minute on an idle CPU (110 s measured with
         the 2 cores loaded 4x): A and B, 1/16 width, 40 steps, 500 test images.
"""

from vgg_jax import config as config_lib
from vgg_jax import paper
from vgg_jax import sweep as sweep_lib
from vgg_jax.scale import Scale

TRAIN_IMAGES = 60_000


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(
    arg,
    model="A",
    S="32",
    width=0.25,
    epochs=6,
    seed=0,
    init="glorot",
    backend="tfds",
    dtype="float32",
    holdout=0,
    table5_images=2000,
    quick=False,
    manual_dir="",
    size=32,
    batch=128,
    steps=0,
    test_images=0,
    patience=1,
    plateau_from=0,
    drop_at=0,
  )
  c = config_lib.base_config()
  c.seed = arg.seed
  c.model.update(name=arg.model, width=arg.width, init=arg.init, dtype=arg.dtype)
  s = Scale.parse(arg.S)
  # `holdout=N` validates (LR schedule, best checkpoint) on the last N training images
  # instead of the test set, which the evaluations then see for the first time.
  keep = TRAIN_IMAGES - arg.holdout
  c.data.update(
    name="fashion_mnist",
    backend=arg.backend,
    manual_dir=arg.manual_dir,
    train_split=f"train[:{keep}]" if arg.holdout else "train",
    eval_split=f"train[{keep}:]" if arg.holdout else "test",
    pad_to=32,
    scale=tuple(s),
    crop=arg.size,
    eval_scale=s.mid,  # Q = S, or mid
    eval_crop=arg.size,
    cache=True,
    shuffle_buffer=TRAIN_IMAGES,
  )
  test = f"test[:{arg.test_images}]" if arg.test_images else "test"
  c.evaluations = config_lib.paper_evaluations(
    s, split=test, table5_split=f"test[:{min(arg.table5_images, arg.test_images or TRAIN_IMAGES)}]"
  )
  c.optim.update(
    batch_size=arg.batch,
    epochs=arg.epochs,
    max_steps=arg.steps,
    plateau_patience=arg.patience,
    plateau_from_epoch=arg.plateau_from,
    lr_drop_epochs=(arg.drop_at,) if arg.drop_at else (),
  )
  c.checkpoint.every_steps = 500
  c.log_every_steps = 50
  if arg.quick:
    c.model.width = 1 / 8
    c.optim.max_steps = 300
  return c


# Designs sized to converge, for `sweep(DESIGN[,key=value...])`: each trains the paper's
# chain (Table 3's runs: A from scratch, B-E warm-started from A, S=40 and [32,48]
# fine-tuned), `he` (from scratch with He init, no warm start: the configs listed, at
# S=32) and `he64` (the same at 64x64: 28 padded to 32, rescaled to S=64, 64 crops, so
# the five pools leave 2x2), all with the same seeds, so each comparison is paired by
# seed. Forecasts: `launch.py sweep --accelerator h200 --mfu 0.2 --dry_run`.
DESIGNS = {
  # One H200: half width, bf16, batch 512, 20 epochs (5 to fine-tune), 3 seeds.
  "gpu": dict(
    chain=paper.TABLE3_RUNS,
    he=("A", "B", "D", "E"),
    he64=("A", "B", "D"),
    seeds=3,
    width=0.5,
    epochs=20,
    finetune_epochs=5,
    batch=512,
    dtype="bfloat16",
    backend="device",
    holdout=5000,
    patience=2,
    plateau_from=5,
  ),
  # 2 CPU cores in <= 45 minutes: A, B, D of the chain at S=32, 1/8 width, 3 seeds, the
  # last of 4 epochs at LR / 10.
  "cpu": dict(
    chain=(("A", paper.S256), ("B", paper.S256), ("D", paper.S256)),
    he=(),
    he64=(),
    seeds=3,
    width=0.125,
    epochs=4,
    finetune_epochs=0,
    batch=128,
    dtype="float32",
    backend="numpy",
    holdout=5000,
    patience=1,
    drop_at=3,
  ),
  # Every code path of `gpu` in under a minute on a CPU: A and B, 1 seed, 40 steps.
  "smoke": dict(
    chain=(("A", paper.S256), ("B", paper.S256)),
    he=(),
    he64=(),
    seeds=1,
    width=0.0625,
    epochs=1,
    finetune_epochs=0,
    batch=32,
    dtype="float32",
    backend="numpy",
    holdout=500,
    patience=1,
    steps=40,
    test_images=500,
  ),
}


# The README's first command: cpu's first seed at 2 epochs, Table 3's depth comparison in
# minutes on 2 CPU cores.
DESIGNS["depth"] = dict(DESIGNS["cpu"], seeds=1, epochs=2, drop_at=0)


def sweep(arg: str = ""):
  """Table 3's runs, chained as in the paper (see `sweep_lib.table3_sweep`), sized for
  2 CPU cores: 1/8 width, 2 epochs (1 for the fine-tuned S=40 and [32,48] runs),
  validated on 5,000 held-out training images, evaluated on the test set
  (docs/ablation_fashion_mnist.md). On a GPU, full width in bf16 without TensorFlow:
  python launch.py sweep --config THIS_FILE:seeds=3 --workdir ROOT --parallel 2
  python launch.py sweep --config THIS_FILE:seeds=3,width=1.0,backend=numpy,dtype=bfloat16 ...
  `sweep("gpu")`, `sweep("cpu")`, `sweep("smoke")`: the designs of DESIGNS, sized to
  converge (`design_sweep`); e.g. "gpu,seeds=5,backend=device" changes one field."""
  name, _, rest = (arg or "").partition(",")
  if name in DESIGNS:
    return design_sweep(DESIGNS[name], rest)
  return sweep_lib.table3_sweep(
    arg,
    scales=paper.STAND_INS["fashion_mnist"],
    finetune_epochs=1,
    width=0.125,
    epochs=2,
    holdout=5000,
    backend="tfds",
    dtype="float32",
    quick=False,
    manual_dir="",
  )


def design_sweep(design: dict, arg: str = "") -> list[dict]:
  """The runs of a design (see DESIGNS), its fields overridden by `arg`."""
  fields = {
    "steps": 0,
    "test_images": 0,
    "manual_dir": "",
    "plateau_from": 0,
    "drop_at": 0,
    **design,
  }
  d = config_lib.parse_arg(
    arg, **{k: v for k, v in fields.items() if k not in ("chain", "he", "he64")}
  )
  extra = "".join(
    f",{key}={d[key]}"
    for key in (
      "width",
      "epochs",
      "batch",
      "dtype",
      "backend",
      "holdout",
      "patience",
      "plateau_from",
      "drop_at",
      "steps",
      "test_images",
      "manual_dir",
    )
  )
  # Fine-tunings start from a trained net: no slow start to wait out.
  finetune = {
    "optim.plateau_from_epoch": 0,
    **({"optim.epochs": d.finetune_epochs} if d.finetune_epochs else {}),
  }
  seeds = range(d.seeds)
  fixed = lambda configs: tuple((config, paper.S256) for config in configs)  # noqa: E731
  chain = sweep_lib.paper_chain(
    design["chain"], seeds, extra=extra, finetune=finetune, scales=paper.STAND_INS["fashion_mnist"]
  )
  he = sweep_lib.paper_chain(
    fixed(design["he"]),
    seeds,
    warm_start=False,
    init="he",
    prefix="he_",
    extra=extra,
    scales=paper.STAND_INS["fashion_mnist"],
  )
  he64 = sweep_lib.paper_chain(
    fixed(design["he64"]),
    seeds,
    warm_start=False,
    init="he",
    prefix="he64_",
    extra=extra + ",size=64",
    scales=paper.STAND_INS["fashion_mnist@64"],
  )
  # Stages, so a sweep cut short (--time_budget_s, one accelerator window) keeps whole
  # comparisons, the paper's first: every seed of the chain's S=32 nets (Table 3's
  # depth, LRN and 1x1 claims), then the He arm at S=32, then the chain's fine-tunings
  # at S=40 and [32,48] (Table 4), then the 64x64 arm.
  finetuned = lambda run: run.get("layers") == "all"  # noqa: E731
  return (
    [dict(run, stage=2 if finetuned(run) else 0) for run in chain]
    + [dict(run, stage=1) for run in he]
    + [dict(run, stage=3) for run in he64]
  )
