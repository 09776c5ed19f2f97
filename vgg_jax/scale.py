"""The training scale S as one value: the shorter side images are rescaled to, fixed
(S = 256) or drawn per image from a range (S in [256, 512], "scale jitter").

Configs keep `data.scale` as a (lo, hi) pair (they are saved as JSON); command lines
write "256" or "256-512", tables and evaluation results "[256,512]". `Scale` reads all
of them and writes each, so no other code converts between them.
"""

import dataclasses
import numbers


@dataclasses.dataclass(frozen=True)
class Scale:
  lo: int
  hi: int

  def __post_init__(self):
    if not 0 < self.lo <= self.hi:
      raise ValueError(
        f"a scale is S or [S_min, S_max] with 0 < S_min <= S_max, got [{self.lo},{self.hi}]"
      )

  @classmethod
  def parse(cls, text: str) -> "Scale":
    """ "256", "256-512" (command lines, run names) or "[256,512]" (tables)."""
    parts = str(text).strip().strip("[]").replace(",", "-").replace(" ", "").split("-")
    if len(parts) > 2:
      raise ValueError(f"a scale is S, S_min-S_max or [S_min,S_max], got {text!r}")
    return cls(int(parts[0]), int(parts[-1]))

  @classmethod
  def of(cls, value) -> "Scale":
    """A Scale, a config's (lo, hi) pair, an int S or a string (see `parse`)."""
    if isinstance(value, cls):
      return value
    if isinstance(value, str):
      return cls.parse(value)
    if isinstance(value, numbers.Integral):
      return cls(int(value), int(value))
    lo, hi = value
    return cls(int(lo), int(hi))

  @property
  def fixed(self) -> bool:
    return self.lo == self.hi

  @property
  def mid(self) -> int:
    """The single test scale Q of Table 3: S itself, or the middle of a jittered range."""
    return (self.lo + self.hi) // 2

  @property
  def name(self) -> str:
    """For run names and command lines: "32", "32-48"."""
    return str(self.lo) if self.fixed else f"{self.lo}-{self.hi}"

  def __str__(self) -> str:
    """For tables and results: "32", "[32,48]"."""
    return str(self.lo) if self.fixed else f"[{self.lo},{self.hi}]"

  def __iter__(self):
    """`lo, hi = scale`; `tuple(scale)` is a config's `data.scale`."""
    return iter((self.lo, self.hi))
