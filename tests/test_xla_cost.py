"""`vgg_jax.xla_cost`: the figures read from a compiled program, checked on programs whose
memory, FLOPs and collectives are known (8 simulated CPU devices), and the HLO parser on
text as XLA writes it."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vgg_jax import xla_cost


class Hlo:
  """A stand-in for a compiled program: its optimised HLO text alone."""

  def __init__(self, text: str):
    self.text = text

  def as_text(self) -> str:
    return self.text


def test_collectives_are_summed_by_kind_from_the_hlo():
  text = "\n".join(
    [
      "  %all-reduce.1 = f32[1024,4]{1,0} all-reduce(f32[1024,4]{1,0} %p), to_apply=%add",
      "  %ag-start = (bf16[8,2]{1,0}, bf16[64,2]{1,0}) all-gather-start(bf16[8,2]{1,0} %x)",
      "  %ag-done = bf16[64,2]{1,0} all-gather-done((bf16[8,2]{1,0}, bf16[64,2]{1,0}) %ag-start)",
      "  %rs = (s32[4]{0}, pred[16]{0}) reduce-scatter(s32[32]{0} %a, pred[128]{0} %b)",
      "  %all-reduce.2 = f32[] all-reduce(f32[] %loss), to_apply=%add",
    ]
  )
  assert xla_cost.collective_bytes(Hlo(text)) == {
    "all-reduce": 1024 * 4 * 4 + 4,
    "all-gather": 64 * 2 * 2,  # the -done's result; the -start is not counted twice
    "reduce-scatter": 4 * 4 + 16,
  }
  assert xla_cost.collectives(text)[1] == {
    "all-reduce": 2,
    "all-gather": 1,
    "reduce-scatter": 1,
  }


def test_a_compiled_programs_figures():
  """A sum over a batch split 8 ways all-reduces its partial sums; a matmul's FLOPs are
  2 m n k a device; donating the input aliases it to the output."""
  mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
  split = NamedSharding(mesh, P("data"))
  x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=split)
  w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
  summed = jax.jit(lambda x, w: (x @ w).sum(0)).lower(x, w).compile()
  assert xla_cost.collective_bytes(summed) == {"all-reduce": 128 * 4}
  assert xla_cost.xla_flops(summed) >= 2 * 8 * 256 * 128
  assert xla_cost.bytes_accessed(summed) > 0
  memory = xla_cost.memory(summed)
  assert memory.arguments == 8 * 256 * 4 + 256 * 128 * 4  # a device's rows, and all of w
  assert memory.donated == 0

  scaled = jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile()
  memory = xla_cost.memory(scaled)
  assert memory.donated == memory.arguments == memory.outputs == 8 * 256 * 4
  assert memory.total == memory.arguments + memory.temporaries
  assert xla_cost.xla_bytes(scaled) == memory.total
  assert xla_cost.collective_bytes(scaled) == {}
