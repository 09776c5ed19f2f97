"""The paper's facts as data: Simonyan & Zisserman, arXiv:1409.1556, as docs/paper.md
states them (the tests check that the two agree). Table 1 is in `architectures.py`,
because it is the model's definition; everything else the code compares against is
here: Table 2's parameters, the multiply-adds, the training scales S and the chain
between them, the test scales Q, the results of Tables 3-6 and the claims they support.
These are references to compare against; nothing is computed from them.
"""

from typing import NamedTuple

from vgg_jax.scale import Scale

# Parameters: Table 2 (millions, rounded) and counted exactly; A, B, D and E are
# torchvision's vgg11, vgg13, vgg16 and vgg19.
PARAMS_MILLIONS = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
EXACT_PARAMS = {
  "A": 132_863_336,
  "A-LRN": 132_863_336,
  "B": 133_047_848,
  "C": 133_638_952,
  "D": 138_357_544,
  "E": 143_667_240,
}
# Multiply-adds (G) of one forward pass at 224 x 224 (C's is our count, not printed).
GMACS_224 = {"A": 7.609, "B": 11.308, "C": 11.771, "D": 15.470, "E": 19.632}

# The training scales S of Section 3.1, in Table 3's order.
S256, S384, S256_512 = Scale(256, 256), Scale(384, 384), Scale(256, 512)
REGIMES = (S256, S384, S256_512)
# The chain: S = 384 fine-tunes the S = 256 net, [256, 512] the S = 384 one (same config).
FINE_TUNED_FROM = {S384: S256, S256_512: S384}
# Table 4's test scales Q per S (Table 3's single Q is `S.mid`).
TABLE4_Q = {S256: (224, 256, 288), S384: (352, 384, 416), S256_512: (256, 384, 512)}

# The training scales that stand for the paper's S on each data set: ImageNet's are the
# paper's; Fashion-MNIST's 32 x 32 crops scale S down by 7 ("@64": at 64 x 64 crops).
STAND_INS = {
  "imagenet2012": {s: s for s in REGIMES},
  "fashion_mnist": {S256: Scale(32, 32), S384: Scale(40, 40), S256_512: Scale(32, 48)},
  "fashion_mnist@64": {S256: Scale(64, 64), S384: Scale(80, 80), S256_512: Scale(64, 96)},
}


def regime(dataset: str, scale: Scale) -> Scale:
  """The paper's S that a run's S on `dataset` stands for (itself when none does)."""
  for key, scales in STAND_INS.items():  # "fashion_mnist@64" is Fashion-MNIST too
    if key.partition("@")[0] == dataset:
      for paper_s, ours in scales.items():
        if ours == scale:
          return paper_s
  return scale


# Top-1 / top-5 validation error (%) on ILSVRC-2012.
TABLE3 = {  # dense, one test scale; its keys are Table 3's (config, S) runs
  ("A", S256): (29.6, 10.4),
  ("A-LRN", S256): (29.7, 10.5),
  ("B", S256): (28.7, 9.9),
  ("C", S256): (28.1, 9.4),
  ("C", S384): (28.1, 9.3),
  ("C", S256_512): (27.3, 8.8),
  ("D", S256): (27.0, 8.8),
  ("D", S384): (26.8, 8.7),
  ("D", S256_512): (25.6, 8.1),
  ("E", S256): (27.3, 9.0),
  ("E", S384): (26.9, 8.7),
  ("E", S256_512): (25.5, 8.0),
}
TABLE3_RUNS = tuple(TABLE3)
TABLE4 = {  # dense, three test scales (TABLE4_Q)
  ("B", S256): (28.2, 9.6),
  ("C", S256): (27.7, 9.2),
  ("C", S384): (27.8, 9.2),
  ("C", S256_512): (26.3, 8.2),
  ("D", S256): (26.6, 8.6),
  ("D", S384): (26.5, 8.6),
  ("D", S256_512): (24.8, 7.5),
  ("E", S256): (26.9, 8.7),
  ("E", S384): (26.7, 8.6),
  ("E", S256_512): (24.8, 7.5),
}
TABLE5 = {  # S in [256, 512], Q in {256, 384, 512}, by protocol
  ("D", "dense"): (24.8, 7.5),
  ("D", "multicrop"): (24.6, 7.5),
  ("D", "multicrop+dense"): (24.4, 7.2),
  ("E", "dense"): (24.8, 7.5),
  ("E", "multicrop"): (24.6, 7.4),
  ("E", "multicrop+dense"): (24.4, 7.1),
}
PROTOCOLS = ("dense", "multicrop", "multicrop+dense")  # Table 5's order
TABLE6_MEMBERS = (("D", S256_512), ("E", S256_512))
TABLE6 = {  # the ensemble of TABLE6_MEMBERS, by protocol (validation set)
  "dense": (24.0, 7.1),
  "multicrop": (23.9, 7.2),
  "multicrop+dense": (23.7, 6.8),
}


class Side(NamedTuple):
  """One side of a comparison: a config at a paper S, a protocol, one Q or Table 4's
  several (three in the paper; those below the crop are dropped)."""

  config: str
  scale: Scale
  protocol: str = "dense"
  multi_q: bool = False


def claims() -> list[tuple[str, Side, Side]]:
  """The paper's comparisons as (claim, baseline, other): the other side has the lower
  top-1 error in the paper, except A-LRN (no gain from LRN: slightly higher)."""
  single = lambda config, s=S256, protocol="dense": Side(config, s, protocol)  # noqa: E731
  multi = lambda config, s=S256_512, protocol="dense": Side(config, s, protocol, True)  # noqa
  return (
    [(f"depth: A vs {c}", single("A"), single(c)) for c in "BDE"]
    + [("LRN: A vs A-LRN", single("A"), single("A-LRN"))]
    + [(f"3x3 over 1x1: C vs D, S {s.name}", single("C", s), single("D", s)) for s in REGIMES]
    + [
      (f"jittered S: {c}, S {s.name} vs [256,512]", single(c, s), single(c, S256_512))
      for c in "CDE"
      for s in (S256, S384)
    ]
    + [
      (f"multi-scale test: {c}, S {s.name}, one Q vs several", single(c, s), multi(c, s))
      for c, s in TABLE4
    ]
    + [(f"multi-crop vs dense: {c}", multi(c), multi(c, protocol="multicrop")) for c in "DE"]
    + [
      (
        f"multi-crop & dense vs multi-crop: {c}",
        multi(c, protocol="multicrop"),
        multi(c, protocol="multicrop+dense"),
      )
      for c in "DE"
    ]
  )
