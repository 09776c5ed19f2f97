"""The paper's test protocols (Section 3.2) on trained checkpoints: single crop, dense,
multi-crop, multi-scale, "multi-crop & dense" and ensembles, with top-1/top-5 error over
a split in which every image counts exactly once.

A prediction. Each image is padded as in training (`data.pad_to`), its shortest side
rescaled to Q with the training pipeline's resampling kernel, its channel means
subtracted, and cut into views:
  single     the centre crop x crop window (what the trainer validates on);
  dense      the whole rescaled image and its horizontal flip, the head run as
             convolutions and the class-score map averaged by the model (`dense=True`);
  multicrop  a 5x5 grid of crop x crop windows evenly spaced from corner to corner, and
             their flips: 50 views per scale. At Q = crop all 25 windows coincide.
Soft-max is averaged over an image's views, then over the scales Q; "multicrop+dense"
averages the two protocols' soft-max, and an ensemble averages its models' (which may
be of different configs: each uses its own crop, padding, statistics and scales).

How it runs. Views of one shape are fed in fixed-size batches (the last one padded with
ignored rows), split over the mesh's `data` axis like training batches, through one
jitted program per distinct view shape: one for all crops, one per dense shape. Dense
views are cut to a multiple of `bucket` (32) pixels per side, keeping the centre: the
five pools drop the remainder anyway (a 300-pixel side gives 9 pool5 positions from its
first 288 pixels), so bucketing moves the dropped pixels from the bottom/right edge to
both edges, and the programs per scale number at most the distinct long sides / 32 in
each orientation (one for a dataset of squares). `bucket=0` runs every shape exactly.
Reading and rescaling are the data backend's (`data.read_split`, `data.rescale_images`):
in JAX for the numpy (host CPU) and device (accelerator) backends, in TensorFlow for tfds.

Counting. Each process evaluates its share of the split (`data.shard`, nothing dropped)
and all processes run the same batches per view shape (the largest share sets the
count, the others pad), so the sums of hits and images are exact on any layout.

Memory. The share is read, predicted and scored `chunk` images at a time (1024; from the
tf.data iterator for tfds), so a host holds one chunk's images and soft-max, not its
share (tens of GB of ImageNet validation images). All processes run the same chunks: one
whose share ends first runs empty ones, padded like the rest.

  python launch.py eval --workdir DIR --protocol dense --scales table4
"""

import collections
import dataclasses
import functools
import itertools
import json
import math
import re
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import config as config_lib
from vgg_jax import data, paths, sharding
from vgg_jax.model import VGGConfig, abstract_weights, model_graphdef
from vgg_jax.scale import Scale

PROTOCOLS = config_lib.PROTOCOLS
VIEWS = {"single": 1, "dense": 2, "multicrop": 50}
GRID = 5  # multi-crop windows per side
CHUNK = data.CHUNK  # images read, rescaled and predicted at a time
TABLE_HEADER = "| config | S | Q | protocol | top-1 | top-5 |\n|---|---|---|---|---|---|"


# ------------------------------------------------------------------ a trained network


@dataclasses.dataclass(frozen=True)
class Trained:
  """A network to evaluate: its run's config, its arrays, the mesh they live on.
  `checkpoint` says which was taken: "best" (by validation accuracy), "latest" or
  "requested"."""

  config: ml_collections.ConfigDict
  model: VGGConfig
  mesh: jax.sharding.Mesh
  params: Any
  batch_stats: Any
  step: int | None = None
  checkpoint: str = ""
  workdir: str = ""


def load_trained(
  workdir: str, step: int | None = None, mesh: Sequence[tuple[str, int]] | None = None
) -> Trained:
  """The network of `workdir` (its config.json) at checkpoint `step`; by default the
  best by validation accuracy where the run recorded one, else the newest. `mesh` is
  axes as in `config.mesh` (default: the run's own); the weights are placed by the run's
  sharding rules. Only the weights are read: the optimiser's state may be anything."""
  with ckpt_lib.reader(workdir) as checkpoints:
    config = ml_collections.ConfigDict(json.loads(paths.Path(workdir, "config.json").read_text()))
    mesh = sharding.make_mesh(mesh or config.mesh)
    chosen, which = choose_step(checkpoints, step)
    saved = checkpoints.read_meta(chosen)["model"]
    cfg = config_lib.network_config(config, saved["num_classes"], saved["in_channels"])
    abstract = abstract_weights(cfg)
    weights = checkpoints.restore_weights(
      ckpt_lib.abstract_like(
        abstract, sharding.state_shardings(abstract, config.sharding_rules or config.sharding, mesh)
      ),
      chosen,
      cfg.signature(),
    )
  return Trained(
    config, cfg, mesh, weights["params"], weights["batch_stats"], chosen, which, workdir
  )


def choose_step(checkpoints: ckpt_lib.Checkpointer, step: int | None) -> tuple[int | None, str]:
  """`step` if given, else the best by validation accuracy, else (no checkpoint was
  validated) the newest; with which of the three it is."""
  if step is not None:
    saved = checkpoints.manager.all_steps()
    if step not in saved:
      raise ckpt_lib.NoCheckpoint(
        f"no checkpoint of step {step} in {checkpoints.directory}; it holds steps "
        f"{', '.join(map(str, saved))}"
      )
    return step, "requested"
  best = checkpoints.best_step()
  return (best, "best") if best is not None else (checkpoints.latest_step(), "latest")


# ------------------------------------------------------------------------------ input


def agreed_chunks(
  chunks: Iterator[tuple[list[np.ndarray], np.ndarray]],
) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
  """The chunks, then empty ones until no process has any left, so all run the same
  number (a share one image longer may need one more chunk)."""
  empty = ([], np.zeros(0, np.int32))
  for images, labels in itertools.chain(chunks, itertools.repeat(empty)):
    most = np.int64(len(labels))
    if jax.process_count() > 1:
      most = multihost_utils.process_allgather(most).max()
    if not most:
      return
    yield images, labels


def grid_offsets(size: int, crop: int) -> np.ndarray:
  """GRID window starts from 0 to size - crop; the middle one is the centre crop's."""
  return np.arange(GRID) * (size - crop) // (GRID - 1)


def dense_side(size: int, crop: int, bucket: int) -> int:
  return max(crop, size - size % bucket) if bucket else size


def centre(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """The centred height x width window of images [N, H, W, C]."""
  y, x = (images.shape[1] - height) // 2, (images.shape[2] - width) // 2
  return images[:, y : y + height, x : x + width]


def view_shape(
  kind: str, height: int, width: int, short_side: int, crop: int, bucket: int
) -> tuple[int, int, bool]:
  """(height, width, dense) of an image's views, from its raw size alone."""
  if kind != "dense":
    return crop, crop, False
  h, w = data.rescaled_shape(height, width, short_side)
  return dense_side(h, crop, bucket), dense_side(w, crop, bucket), True


def views(images: np.ndarray, kind: str, crop: int, bucket: int) -> np.ndarray:
  """Rescaled, centred images of one size [N, H, W, C] -> their views
  [N * VIEWS[kind], h, w, C], each image's together (its crops, then their flips)."""
  h, w = images.shape[1:3]
  if kind == "single":
    return centre(images, crop, crop)
  if kind == "dense":
    x = centre(images, dense_side(h, crop, bucket), dense_side(w, crop, bucket))
    per_image = np.stack([x, x[:, :, ::-1]], 1)
  else:
    crops = np.stack(
      [
        images[:, y : y + crop, x : x + crop]
        for y in grid_offsets(h, crop)
        for x in grid_offsets(w, crop)
      ],
      1,
    )
    per_image = np.concatenate([crops, crops[:, :, :, ::-1]], 1)
  return per_image.reshape(-1, *per_image.shape[2:])


def fixed_batches(
  chunks: Iterator[tuple[np.ndarray, np.ndarray]], batch: int, steps: int, shape: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Exactly `steps` (views, owners) batches of `batch` rows from (views, owner image)
  chunks; rows past len(owners) are zero padding."""
  rows, owners = np.zeros((0, *shape), np.float32), np.zeros(0, np.int64)
  for chunk, owner in chunks:
    rows, owners = np.concatenate([rows, chunk]), np.concatenate([owners, owner])
    while len(rows) >= batch:
      yield rows[:batch], owners[:batch]
      rows, owners, steps = rows[batch:], owners[batch:], steps - 1
  for _ in range(steps):
    padding = np.zeros((batch - len(rows), *shape), np.float32)
    yield np.concatenate([rows, padding]), owners
    rows, owners = rows[:0], owners[:0]


def agreed_steps(local_views: dict[tuple, int], batch: int) -> dict[tuple, int]:
  """Batches per view shape, the same (and in the same order) on every process: the
  largest share of each shape sets the count, the other processes pad."""
  counts = dict(local_views)
  if jax.process_count() > 1:
    rows = np.array([[*key, n] for key, n in counts.items()], np.int64).reshape(-1, 4)
    longest = int(multihost_utils.process_allgather(np.int64(len(rows))).max())
    padded = np.zeros((longest, 4), np.int64)
    padded[: len(rows)] = rows
    counts = {}
    for h, w, dense, n in multihost_utils.process_allgather(padded).reshape(-1, 4):
      if n:
        key = (int(h), int(w), bool(dense))
        counts[key] = max(counts.get(key, 0), int(n))
  return {key: math.ceil(n / batch) for key, n in sorted(counts.items())}


# ------------------------------------------------------------------------- the runner


def view_kinds(protocol: str) -> tuple[str, ...]:
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
  return ("multicrop", "dense") if protocol == "multicrop+dense" else (protocol,)


def forward(params, batch_stats, images, *, graphdef, dense: bool) -> jax.Array:
  model = nnx.merge(graphdef, params, batch_stats)
  model.eval()
  return model(images, dense=dense)


@functools.lru_cache(maxsize=None)
def forward_program(model: VGGConfig, batch_sharding) -> Any:
  """The jitted forward of a network: one per (model, sharding) in a process, so the
  runs of a sweep (a config's seeds) share its compilations."""
  return jax.jit(
    functools.partial(forward, graphdef=model_graphdef(model)),
    static_argnames="dense",
    out_shardings=batch_sharding,
  )


def one_ahead(items: Iterator) -> Iterator:
  """Each item once the next one exists: the device runs a batch while the host
  prepares the next and reads the one before."""
  previous = None
  for item in items:
    if previous is not None:
      yield previous
    previous = item
  if previous is not None:
    yield previous


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def same_shape_groups(images: Sequence[np.ndarray], members: Sequence[int]) -> list[list[int]]:
  """`members` (indices into `images`) grouped by image shape, the shapes in order."""
  ordered = sorted(members, key=lambda i: images[i].shape)
  return [list(same) for _, same in itertools.groupby(ordered, key=lambda i: images[i].shape)]


def pad_each(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
  """`data.pad_images` of raw images of any sizes, those of one size padded together."""
  padded = [None] * len(images)
  for members in same_shape_groups(images, range(len(images))):
    stacked = data.pad_images(np.stack([images[i] for i in members]), size)
    for i, image in zip(members, stacked):
      padded[i] = image
  return padded


class Runner:
  """One network's views in, soft-max out: fixed-size batches, split over the mesh's
  `data` axis, one compiled program per view shape (`programs`)."""

  def __init__(self, trained: Trained, batch_size: int | None = None):
    self.trained = trained
    cfg = data.resolve_config(trained.config.data)
    self.data_cfg, self.pad_to, self.crop = cfg, cfg.pad_to, trained.model.image_size
    self.batch_size = batch_size or trained.config.optim.batch_size
    if self.batch_size % trained.mesh.shape["data"] or self.batch_size % jax.process_count():
      raise ValueError(
        f"batch {self.batch_size} does not divide between the "
        f"{trained.mesh.shape['data']} devices of the data axis and the "
        f"{jax.process_count()} processes"
      )
    self.local_batch = self.batch_size // jax.process_count()
    self.batch_sharding = sharding.batch_sharding(trained.mesh)
    self._forward = forward_program(trained.model, self.batch_sharding)
    self.programs: set[tuple] = set()

  def dispatch(self, images: np.ndarray, dense: bool) -> jax.Array:
    """Starts the logits of one process-local batch [local_batch, H, W, C]."""
    self.programs.add((images.shape, dense))
    return self._forward(
      self.trained.params,
      self.trained.batch_stats,
      data.to_global(images, self.batch_sharding),
      dense=dense,
    )

  def fetch(self, logits: jax.Array) -> np.ndarray:
    """This process's rows of dispatched logits."""
    return np.asarray(
      multihost_utils.global_array_to_host_local_array(logits, self.trained.mesh, P("data"))
    )

  def logits(self, images: np.ndarray, dense: bool) -> np.ndarray:
    return self.fetch(self.dispatch(images, dense))

  def predict(
    self,
    images: Sequence[np.ndarray],
    protocol: str,
    scales: Sequence[int],
    bucket: int = 32,
    scans: dict | None = None,
  ) -> np.ndarray:
    """Soft-max [N, classes] of raw images under a protocol, averaged over `scales`.
    `scans` keeps each (view kind, Q)'s soft-max for other protocols on the same images
    (multi-crop & dense reuses dense's and multi-crop's)."""
    if min(scales) < self.crop:
      raise ValueError(f"scales {list(scales)} must be at least the crop {self.crop}")
    scans = {} if scans is None else scans
    padded = None
    for kind, q in itertools.product(view_kinds(protocol), scales):
      if (kind, q) not in scans:
        if padded is None:
          padded = pad_each(images, self.pad_to)
        scans[kind, q] = self.scan(padded, kind, q, bucket)
    return np.mean(
      [scans[kind, q] for kind, q in itertools.product(view_kinds(protocol), scales)], 0
    )

  def scan(
    self, images: Sequence[np.ndarray], kind: str, short_side: int, bucket: int
  ) -> np.ndarray:
    """Soft-max averaged over each image's views of one kind at one scale."""
    groups = collections.defaultdict(list)
    for i, image in enumerate(images):
      groups[view_shape(kind, *image.shape[:2], short_side, self.crop, bucket)].append(i)
    probs = np.zeros((len(images), self.trained.model.num_classes))
    sizes = {key: len(members) * VIEWS[kind] for key, members in groups.items()}
    started = (
      (self.dispatch(batch, dense=key[2]), owners)
      for key, steps in agreed_steps(sizes, self.local_batch).items()
      for batch, owners in fixed_batches(
        self.view_chunks(images, groups.get(key, []), kind, short_side, bucket),
        self.local_batch,
        steps,
        (*key[:2], self.trained.model.in_channels),
      )
    )
    for logits, owners in one_ahead(started):
      np.add.at(probs, owners, softmax(self.fetch(logits)[: len(owners)]))
    return probs / VIEWS[kind]

  def rescaled(self, images: np.ndarray, short_side: int) -> np.ndarray:
    """Same-sized raw images [N, h, w, C] rescaled and centred by the data backend (the
    backends agree to 1e-2, tests/test_data.py)."""
    return data.rescale_images(self.data_cfg, images, short_side)

  def view_chunks(
    self, images, members: list[int], kind: str, short_side: int, bucket: int
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(views, their owners) per part of up to a batch of images of one raw shape,
    rescaled together."""
    for same in same_shape_groups(images, members):
      for start in range(0, len(same), self.local_batch):
        part = same[start : start + self.local_batch]
        rescaled = self.rescaled(np.stack([images[i] for i in part]), short_side)
        yield views(rescaled, kind, self.crop, bucket), np.repeat(part, VIEWS[kind])


# ----------------------------------------------------------------------------- scales


def resolve_scales(spec: str, config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The test scales Q for a run. "" : its own validation Q (Table 3); "table4": for a
  fixed S, {S - d, S, S + d} with d = 32 at crop 224 scaled with the crop (5 at 32),
  dropping those below the crop (Fashion-MNIST S=32 gives {32, 37}); for a jittered
  [S_min, S_max], {S_min, middle, S_max} (the paper's {256, 384, 512}; {32, 40, 48} for
  Fashion-MNIST's [32, 48]). Otherwise a list, "32,40,48"."""
  if not spec:
    return (config.data.eval_scale,)
  if spec != "table4":
    return tuple(int(q) for q in spec.split(","))
  s = Scale.of(config.data.scale)
  crop = config.data.crop
  if not s.fixed:
    return s.lo, s.mid, s.hi
  d = round(32 * crop / 224)
  return tuple(q for q in (s.lo - d, s.lo, s.lo + d) if q >= crop)


# ----------------------------------------------------------------------------- results


def hits(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """This process's [top-1 hits, top-5 hits, images]."""
  top5 = np.argsort(-probs, axis=1)[:, :5]
  return np.array(
    [(top5[:, 0] == labels).sum(), (top5 == labels[:, None]).any(1).sum(), len(labels)], np.int64
  )


def score(sums: np.ndarray) -> dict:
  """Top-1/top-5 error from each process's `hits`, summed over processes."""
  if jax.process_count() > 1:
    sums = multihost_utils.process_allgather(sums).sum(0)
  top1, top5_hits, count = (int(v) for v in sums)
  return dict(
    top1_err=1 - top1 / count,
    top5_err=1 - top5_hits / count,
    top1_hits=top1,
    top5_hits=top5_hits,
    count=count,
  )


def predict(
  runners: Sequence[Runner],
  images: Sequence[np.ndarray],
  protocol: str,
  scales: Sequence[Sequence[int]],
  bucket: int = 32,
  scans: Sequence[dict] | None = None,
) -> np.ndarray:
  """An ensemble's soft-max [N, classes]: the average of its members', each at its own
  scales (`scans`: each member's memo, see `Runner.predict`)."""
  scans = scans or [{} for _ in runners]
  return np.mean(
    [r.predict(images, protocol, q, bucket, memo) for r, q, memo in zip(runners, scales, scans)], 0
  )


def evaluate(
  models: Sequence[Trained], protocol: str = "dense", scales: str = "", *, split: str = "", **kwargs
) -> dict:
  """One network, or the soft-max average of several (an ensemble), on `split` (default:
  the first model's eval split) under `protocol` at `scales` (see `resolve_scales`,
  resolved per model); the keyword arguments are `evaluate_many`'s."""
  return evaluate_many(models, [(protocol, scales, split)], **kwargs)[0]


def evaluate_many(
  models: Sequence[Trained],
  evaluations: Sequence[tuple[str, str, str]],
  *,
  batch_size: int | None = None,
  bucket: int = 32,
  chunk: int = CHUNK,
  process_index: int | None = None,
  process_count: int | None = None,
) -> list[dict]:
  """Several (protocol, scales, split) evaluations of one network or ensemble in one
  pass per split, `chunk` images at a time: the compiled programs are shared, and each
  (view kind, Q) is predicted once per image however many protocols use it. The
  process arguments simulate a share of the split."""
  datasets = {m.config.data.name for m in models}
  if len(datasets) > 1:
    raise ValueError(f"an ensemble's models must share a dataset, got {sorted(datasets)}")
  runners = [Runner(m, batch_size) for m in models]
  by_split = collections.defaultdict(list)
  for index, (protocol, scales, split) in enumerate(evaluations):
    view_kinds(protocol)  # an unknown protocol fails before any compute
    by_split[split or models[0].config.data.eval_split].append(
      (index, protocol, [resolve_scales(scales, m.config) for m in models])
    )
  results = [None] * len(evaluations)
  for split, group in by_split.items():
    sums = np.zeros((len(group), 3), np.int64)
    for images, labels in agreed_chunks(
      data.read_split(models[0].config.data, split, process_index, process_count, chunk)
    ):
      scans = [{} for _ in runners]
      for i, (_, protocol, per_model) in enumerate(group):
        sums[i] += hits(predict(runners, images, protocol, per_model, bucket, scans), labels)
    for total, (index, protocol, per_model) in zip(sums, group):
      results[index] = dict(
        score(total),
        protocol=protocol,
        split=split,
        models=[
          dict(
            workdir=m.workdir,
            step=m.step,
            checkpoint=m.checkpoint,
            config=m.model.name,
            S=str(Scale.of(m.config.data.scale)),
            Q=list(q),
          )
          for m, q in zip(models, per_model)
        ],
        views_per_image=[sum(VIEWS[k] for k in view_kinds(protocol)) * len(q) for q in per_model],
        compilations=sum(len(r.programs) for r in runners),
        bucket=bucket,
      )
  return results


def configured(config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
  """A run's `config.evaluations` (base_config's for runs from before the field), parsed:
  what `launch.py eval --configured` and a sweep evaluate."""
  return [
    config_lib.parse_evaluation(spec)
    for spec in config.get("evaluations", config_lib.base_config().evaluations)
  ]


def table_row(result: dict) -> str:
  """The result as a row under TABLE_HEADER (errors in %, as the paper's tables)."""
  models = result["models"]
  qs = {",".join(map(str, m["Q"])) for m in models}
  return (
    f"| {' + '.join(m['config'] for m in models)} | "
    f"{' + '.join(m['S'] for m in models)} | {' / '.join(sorted(qs))} | "
    f"{result['protocol']} | {100 * result['top1_err']:.1f} | "
    f"{100 * result['top5_err']:.1f} |"
  )


def result_path(result: dict) -> str:
  """WORKDIR/eval/SPLIT_PROTOCOL_QSCALES[_with_OTHERS].json in the first model's
  workdir ("test[:200]" is written test_200)."""
  first, *others = result["models"]
  split = re.sub(r"\W+", "_", result["split"]).strip("_")
  name = f"{split}_{result['protocol']}_Q{'-'.join(map(str, first['Q']))}"
  if others:
    name += "_with_" + "+".join(paths.Path(m["workdir"]).name for m in others)
  return paths.join(first["workdir"], "eval", name + ".json")


def write_result(result: dict) -> str:
  """Writes the JSON (process 0 only), with its table row; returns its path."""
  path = result_path(result)
  if jax.process_index() == 0:
    paths.Path(path).parent.mkdir(parents=True, exist_ok=True)
    paths.write_text(path, json.dumps(dict(result, table_row=table_row(result)), indent=2))
  return path
