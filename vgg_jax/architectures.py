"""Table 1 of the paper as data: the six VGG configurations, stage by stage.

Each configuration is five stages; each stage is a tuple of layers written in the
paper's own notation ("conv3-64" is a 3x3 conv with 64 output channels, "conv1-256" a
1x1 conv, "LRN" local response normalisation). Every stage ends with a 2x2 max-pool of
stride 2, which is therefore implicit. The classifier (FC-4096, FC-4096, FC-classes)
is the same for all six and lives in `vgg_jax.model`.

The depth sweep indexes this table; nothing else in the library names a configuration.
"""

import dataclasses

TABLE1: dict[str, tuple[tuple[str, ...], ...]] = {
  "A": (
    ("conv3-64",),
    ("conv3-128",),
    ("conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512"),
    ("conv3-512", "conv3-512"),
  ),
  "A-LRN": (
    ("conv3-64", "LRN"),
    ("conv3-128",),
    ("conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512"),
    ("conv3-512", "conv3-512"),
  ),
  "B": (
    ("conv3-64", "conv3-64"),
    ("conv3-128", "conv3-128"),
    ("conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512"),
    ("conv3-512", "conv3-512"),
  ),
  "C": (
    ("conv3-64", "conv3-64"),
    ("conv3-128", "conv3-128"),
    ("conv3-256", "conv3-256", "conv1-256"),
    ("conv3-512", "conv3-512", "conv1-512"),
    ("conv3-512", "conv3-512", "conv1-512"),
  ),
  "D": (
    ("conv3-64", "conv3-64"),
    ("conv3-128", "conv3-128"),
    ("conv3-256", "conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512", "conv3-512"),
    ("conv3-512", "conv3-512", "conv3-512"),
  ),
  "E": (
    ("conv3-64", "conv3-64"),
    ("conv3-128", "conv3-128"),
    ("conv3-256", "conv3-256", "conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512", "conv3-512", "conv3-512"),
    ("conv3-512", "conv3-512", "conv3-512", "conv3-512"),
  ),
}

# Names people already use for the same networks (torchvision, Keras).
ALIASES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

CONFIG_NAMES: tuple[str, ...] = tuple(TABLE1) + tuple(ALIASES)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One entry of Table 1, parsed: kind is "conv" or "lrn"."""

  kind: str
  kernel: int = 0
  features: int = 0


def parse_layer(token: str) -> Layer:
  if token == "LRN":
    return Layer("lrn")
  head, features = token.split("-")
  if head not in ("conv1", "conv3"):
    raise ValueError(f"unknown layer {token!r} in Table 1")
  return Layer("conv", kernel=int(head[-1]), features=int(features))


def canonical_name(name: str) -> str:
  """Resolves an alias ("vgg16") or a case variant ("a-lrn") to a Table 1 name."""
  key = {n.lower(): n for n in CONFIG_NAMES}.get(str(name).lower())
  if key is None:
    raise ValueError(f"unknown VGG configuration {name!r}; choose one of {', '.join(CONFIG_NAMES)}")
  return ALIASES.get(key, key)


def stages(name: str) -> tuple[tuple[Layer, ...], ...]:
  return tuple(tuple(parse_layer(t) for t in stage) for stage in TABLE1[canonical_name(name)])


def weight_layers(name: str) -> int:
  """The depth in the paper's sense: conv layers plus the three FC layers."""
  return sum(layer.kind == "conv" for stage in stages(name) for layer in stage) + 3
