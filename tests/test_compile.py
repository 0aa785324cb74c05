"""torch.compile and the activation capture: a compiled capture gives eager capture's numbers on a tiny model; the
recording hooks never wait for the device (no host sync); the switch is on for CUDA only and reaches the commands."""

import contextlib

import numpy as np
import pytest
import torch

from memprune.capture.hooks import FFNInputRecorder, capture
from memprune.errors import InputError
from memprune.models import compile_unet, ffn_layers, load_pipeline, resolve_compile
from memprune.sampling import SamplingConfig

PROMPTS = ["a red circle at the left", "a blue square on black", "two green lines", "a yellow dot"]
CFG = SamplingConfig(steps=4, guidance=3.0, batch_size=2, compile="false")
# inductor and aot_eager reorder float32 reductions; 4 denoising steps keep the drift near 1e-5 (measured <= 1e-5)
RTOL = 1e-4


def test_resolve_compile():
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu") and not resolve_compile("auto", "mps")
    assert resolve_compile(True, "cpu") and resolve_compile("true", "cpu") and not resolve_compile("false", "cuda")
    with pytest.raises(InputError, match="model.compile"):
        resolve_compile("yes", "cpu")


def test_auto_leaves_a_cpu_unet_eager(tiny_pipe):
    assert compile_unet(tiny_pipe.unet, "auto") is False
    assert tiny_pipe.unet._compiled_call_impl is None
    assert tiny_pipe.unet.conv_in.weight.is_contiguous()  # not moved to channels_last either


@pytest.fixture(scope="module")
def eager(tiny_model):
    return capture(load_pipeline(tiny_model, "cpu", "float32"), PROMPTS, 0, CFG)


@pytest.fixture(scope="module")
def aot_eager_pipe(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", "float32")
    assert compile_unet(pipe.unet, "true", backend="aot_eager")
    return pipe


@pytest.mark.slow  # compiling takes most of a fast tier's budget; the full suite runs both backends
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_capture_equals_eager(tiny_model, eager, aot_eager_pipe, backend):
    """aot_eager: dynamo traces the hooks' writes into the graph; inductor (needs a C compiler; ~2.5 min on 2
    shared cores): the generated kernels as well."""
    if backend == "aot_eager":
        pipe = aot_eager_pipe
    else:
        pipe = load_pipeline(tiny_model, "cpu", "float32")
        assert compile_unet(pipe.unet, "true", backend=backend)
    compiled = capture(pipe, PROMPTS, 0, CFG)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = capture(pipe, PROMPTS, 0, CFG)  # same shapes: the graph holding the hooks is reused as it is
    np.testing.assert_array_equal(compiled.timesteps, eager.timesteps)
    for layer in eager.layers:
        assert np.abs(compiled.sumsq[layer]).min() >= 0 and compiled.sumsq[layer].any()
        np.testing.assert_allclose(compiled.sumsq[layer], eager.sumsq[layer], rtol=RTOL)
        np.testing.assert_array_equal(again.sumsq[layer], compiled.sumsq[layer])


@pytest.mark.slow
def test_hooks_added_after_compiling_still_run(aot_eager_pipe):
    """Dynamo's default skips the guards on module hooks: a hook added after the first compiled call never runs.
    compile_unet turns them on, so it recompiles instead (NeMo's blocking, inference-time mitigations)."""
    unet = aot_eager_pipe.unet
    x = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    text = torch.randn(4, 20, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(x, torch.tensor(10), encoder_hidden_states=text).sample
        name, layer = ffn_layers(unet)[0]
        handle = layer.register_forward_pre_hook(lambda m, args: (torch.zeros_like(args[0]),))
        blocked = unet(x, torch.tensor(10), encoder_hidden_states=text).sample
        handle.remove()
        after = unet(x, torch.tensor(10), encoder_hidden_states=text).sample
    assert not torch.equal(before, blocked)
    torch.testing.assert_close(after, before)


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def host_syncs_raise(unet):
    """While `unet` runs (its hooks included), every Tensor method that waits for the device raises."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCS}
    call = unet.forward

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host sync in a UNet call: Tensor.{name}")
        return method

    def guarded(*args, **kwargs):
        for name in SYNCS:
            setattr(torch.Tensor, name, refuse(name))
        try:
            return call(*args, **kwargs)
        finally:
            for name, method in saved.items():
                setattr(torch.Tensor, name, method)

    unet.forward = guarded
    try:
        yield
    finally:
        del unet.forward


def test_capture_hooks_never_sync(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", "float32")
    unet = pipe.unet
    with host_syncs_raise(unet):
        cap = capture(pipe, PROMPTS[:2], 0, CFG)
    assert cap.sumsq[cap.layers[0]].shape[:3] == (2, 4, 2)
    # the guard catches a hook that syncs (as the recorder's timestep hook did with `.item()`)
    layer = ffn_layers(unet)[0][1]
    handle = layer.register_forward_pre_hook(lambda m, args: args[0].sum().item() and None)
    with host_syncs_raise(unet), pytest.raises(AssertionError, match="Tensor.item"):
        capture(pipe, PROMPTS[:2], 0, CFG)
    handle.remove()


def test_recorder_follows_the_unet_not_the_capture(tiny_pipe):
    """One recorder per UNet: installed by the first capture, reused by every later one."""
    layers = ffn_layers(tiny_pipe.unet)
    rec = FFNInputRecorder.for_unet(tiny_pipe.unet, layers)
    hooks = sum(len(m._forward_pre_hooks) for _, m in layers)
    capture(tiny_pipe, PROMPTS[:1], 0, CFG)
    assert FFNInputRecorder.for_unet(tiny_pipe.unet, layers) is rec
    assert sum(len(m._forward_pre_hooks) for _, m in layers) == hooks


def test_the_switch_reaches_the_sampling_commands():
    from memprune.cli import build_parser
    from memprune.cliargs import sampling_config

    parser = build_parser()
    for command in ("capture", "sample", "eval-sample", "attack-generate"):
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        assert {a.dest: a.default for a in sub._actions}["compile"] == "auto", command
    args = parser.parse_args(["capture", "--model", "m", "--out", "o", "--compile", "true"])
    assert sampling_config(args).compile == "true"
    assert SamplingConfig().compile == "auto"


def test_schema_default_and_plan_argument():
    import yaml

    from conftest import REPO
    from memprune.plan.config import Plan

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["model"]["properties"]["compile"]["default"] == "auto" == SamplingConfig().compile
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config/testbed.yaml").read_text())
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))  # fills the schema's defaults
    assert "--compile auto" in Plan(cfg, REPO).sampling_args()
    cfg["model"]["compile"] = False
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert "--compile false" in Plan(cfg, REPO).sampling_args()
