"""The profiler switch (config.profile_steps) and the trace summary, on CPU traces; the
GPU's cuDNN op names on an HLO excerpt."""

import glob
import json

import jax
import pytest

from benchmarks import device_run, profile_summary
from conftest import needs_fashion_mnist
from vgg_jax import config as config_lib
from vgg_jax import train

TINY_D = device_run.Size(configs="D", width=1 / 16, resolution=32, batch=4, dtype="float32")


@needs_fashion_mnist
def test_profile_steps_trace_exactly_those_train_steps(tmp_path):
  config = config_lib.experiment_config("fashion_mnist", "quick,backend=numpy")
  config.model.width = 1 / 16
  config.optim.update(batch_size=32, max_steps=5)
  config.data.eval_split = "test[:64]"
  config.mesh = (("data", 1), ("model", 1))
  config.profile_steps = (2, 3)
  train.train_and_evaluate(config, str(tmp_path))
  assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  profile = str(tmp_path / "profile")
  summary = profile_summary.summarise(profile, profile_summary.load_hlo(profile))
  assert summary["executions"] == 2  # steps 2 and 3, nothing else of the train step
  # The step's HLO, written beside the trace, names every op of it by kind and layer.
  assert summary["hlo_ops_named"] == summary["events"] > 0
  assert summary["kinds_ms"].get("conv wgrad", 0) > 0 and "conv1_1" in summary["layers_ms"]


@pytest.mark.parametrize("steps", [(3, 2), (0, 4), (-1, 2)])
def test_bad_profile_steps_are_errors(steps):
  config = config_lib.base_config()
  config.profile_steps = steps
  with pytest.raises(ValueError, match="profile_steps"):
    config_lib.validate(config, 1)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
  """Three traced steps of a tiny D and its optimised HLO, as device_run's profile part."""
  directory = tmp_path_factory.mktemp("trace")
  step, state, batch = device_run.compiled_step(TINY_D, "D", {}, {})
  (directory / "step_hlo.txt").write_text(step.as_text())
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  with jax.profiler.trace(str(directory)):
    for _ in range(3):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
  return directory


def test_summary_of_a_cpu_trace_names_kinds_and_layers(trace_dir):
  summary = profile_summary.summarise(str(trace_dir), profile_summary.load_hlo(str(trace_dir)))
  assert summary["source"] == "host" and summary["executions"] == summary["steps"] == 3
  assert summary["hlo_ops_named"] == summary["events"] > 0
  kinds = summary["kinds_ms"]
  for kind in ("conv fwd", "conv dgrad", "conv wgrad", "matmul", "pooling", "optimiser"):
    assert kinds.get(kind, 0) > 0, kind
  # D's thirteen convolutions each named by layer, forward; all but the first backward too.
  convs = [layer for layer in summary["layers_ms"] if layer.startswith("conv")]
  assert len(convs) == 13 and all(summary["layers_ms"][c]["conv fwd"] > 0 for c in convs)
  assert list(summary["layers_ms"])[:3] == ["conv1_1", "relu1_1", "conv1_2"]
  assert 0 < summary["busy_ms"] <= summary["span_ms"]
  assert len(summary["between_steps_ms"]) == 2


def test_summary_cli_prints_the_tables_and_writes_json(trace_dir, tmp_path, capsys):
  summary = profile_summary.main([str(trace_dir), "--json", str(tmp_path / "s.json")])
  printed = capsys.readouterr().out
  assert "| conv fwd |" in printed and "| conv1_1 |" in printed and "Top ops" in printed
  assert json.loads((tmp_path / "s.json").read_text())["kinds_ms"] == pytest.approx(
    summary["kinds_ms"]
  )


GPU_HLO = """\
HloModule jit_train_step, entry_computation_layout={()->()}

%fused_relu (param_0: bf16[8,56,56,256]) -> bf16[8,56,56,256] {
  %param_0 = bf16[8,56,56,256]{3,2,1,0} parameter(0)
  ROOT %maximum.1 = bf16[8,56,56,256]{3,2,1,0} maximum(%param_0, %param_0), metadata={op_name="jit(train_step)/jvp(relu3_1)/max"}
}

%fused_reduce_select (param_0: bf16[8,56,56,256]) -> bf16[256] {
  %param_0 = bf16[8,56,56,256]{3,2,1,0} parameter(0)
  ROOT %reduce.1 = bf16[256]{0} reduce(%param_0, %zero), dimensions={0,1,2}, to_apply=%add, metadata={op_name="jit(train_step)/transpose(jvp(conv3_1))/reduce_sum"}
}

ENTRY %main (p: bf16[8,56,56,128]) -> bf16[8,56,56,256] {
  %custom-call.1 = (bf16[8,56,56,256]{3,2,1,0}, u8[0]{0}) custom-call(%p, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(conv3_1)/conv_general_dilated"}
  %custom-call.2 = (bf16[8,56,56,128]{3,2,1,0}, u8[0]{0}) custom-call(%g, %w), custom_call_target="__cudnn$convBackwardInput", metadata={op_name="jit(train_step)/transpose(jvp(conv3_1))/conv_general_dilated"}
  %custom-call.3 = (bf16[256,3,3,128]{3,2,1,0}, u8[0]{0}) custom-call(%p, %g), custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(train_step)/transpose(jvp(conv3_1))/conv_general_dilated"}
  %select-and-scatter.4 = bf16[8,56,56,256]{3,2,1,0} select-and-scatter(%a, %b, %c), metadata={op_name="jit(train_step)/transpose(jvp(pool3))/select_and_scatter_add"}
  %loop_fusion.5 = bf16[8,56,56,256]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_relu
  %copy.6 = bf16[8,56,56,256]{2,1,3,0} copy(%x)
  %input_reduce_select_fusion.8 = bf16[256]{0} fusion(%g), kind=kInput, calls=%fused_reduce_select, metadata={op_name="jit(train_step)/transpose(jvp(conv3_1))/reduce_sum"}
  ROOT %multiply.7 = f32[256]{0} multiply(%u, %v), metadata={op_name="jit(train_step)/mul"}
}
"""


@pytest.mark.parametrize(
  "op,kind,layer",
  [
    ("custom-call.1", "conv fwd", "conv3_1"),
    ("custom-call.2", "conv dgrad", "conv3_1"),
    ("custom-call.3", "conv wgrad", "conv3_1"),
    ("select-and-scatter.4", "pooling", "pool3"),
    ("loop_fusion.5", "activation", "relu3_1"),
    ("copy.6", "copies", ""),
    ("input_reduce_select_fusion.8", "bias grad", "conv3_1"),
    ("multiply.7", "optimiser", ""),
  ],
)
def test_gpu_ops_are_classified_by_cudnn_target_and_name_scope(op, kind, layer):
  ops, computations = profile_summary.parse_hlo(GPU_HLO)
  forward = profile_summary.forward_conv_dims(ops)
  assert profile_summary.classify(ops[op], computations, forward) == (kind, layer)


@pytest.mark.parametrize(
  "kernel,kind",
  [
    ("sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv wgrad"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw", "conv dgrad"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv fwd"),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_nn_align8", "matmul"),
    ("MemcpyD2D", "copies"),
    ("loop_add_fusion", "other"),
  ],
)
def test_events_without_an_hlo_op_are_classified_by_kernel_name(kernel, kind):
  assert profile_summary.kernel_kind(kernel) == kind
