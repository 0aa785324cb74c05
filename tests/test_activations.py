"""Hook capture against a direct computation, scheduler-driven timesteps, and model layer discovery."""

import numpy as np
import pytest
import torch

from memprune.capture.hooks import FFNInputRecorder, capture
from memprune.models import ffn_layers
from memprune.errors import InputError
from memprune.sampling import SamplingConfig


def test_recorder_matches_direct_geglu_output(tiny_pipe):
    unet = tiny_pipe.unet
    layers = ffn_layers(unet)
    direct = {name: [] for name, _ in layers}
    handles = []
    for name, _ in layers:
        geglu = unet.get_submodule(name.rsplit(".", 1)[0] + ".0")  # ff.net.0, the GEGLU
        handles.append(geglu.register_forward_hook(
            lambda m, a, out, name=name: direct[name].append(out.float().pow(2).sum(dim=1))))
    rec = FFNInputRecorder.for_unet(unet, layers)
    with rec.recording(calls=3, batch=2):
        tiny_pipe(prompt=["a red circle at the left on a black background"], num_inference_steps=3,
                  guidance_scale=3.0, output_type="np")
    for h in handles:
        h.remove()
    sumsq = rec.result()
    for name, _ in layers:
        assert sumsq[name].shape == (3, 2, unet.get_submodule(name).in_features)  # (call, uncond + cond, feature)
        # float32: the same operations as a direct computation, so the same bits
        np.testing.assert_array_equal(sumsq[name], torch.stack(direct[name]).numpy())
    assert FFNInputRecorder.for_unet(unet, layers) is rec  # installed once per UNet


def test_recording_refuses_a_wrong_call_count(tiny_pipe):
    rec = FFNInputRecorder.for_unet(tiny_pipe.unet, ffn_layers(tiny_pipe.unet))
    with pytest.raises(RuntimeError, match="3 UNet calls recorded where the scheduler made 2"):
        with rec.recording(calls=2, batch=2):
            tiny_pipe(prompt=["x"], num_inference_steps=3, guidance_scale=3.0, output_type="np")
    with rec.recording(calls=2, batch=2):  # the buffers are reused, the count restarts
        tiny_pipe(prompt=["x"], num_inference_steps=2, guidance_scale=3.0, output_type="np")
    assert rec.result()[rec.layers[0][0]].shape[:2] == (2, 2)


def test_low_precision_sums_accumulate_in_float32():
    from memprune.capture.hooks import token_sumsq

    x = torch.full((2, 4096, 3), 200.0)  # each square (40000) fits float16, their sum (1.6e8) does not
    for dtype in (torch.float16, torch.bfloat16):
        out = token_sumsq(x.to(dtype))
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), 4096 * 200.0**2, rtol=1e-5)
    np.testing.assert_array_equal(token_sumsq(x).numpy(), x.square().sum(dim=1).numpy())


def test_capture_reads_timesteps_from_the_scheduler(tiny_model):
    from memprune.models import load_pipeline

    pipe = load_pipeline(tiny_model, "cpu", "float32", scheduler="PNDMScheduler")
    pipe.scheduler.register_to_config(skip_prk_steps=True)  # as Stable Diffusion 1.5 ships it
    cap = capture(pipe, ["p one", "p two", "p three"], seed=0,
                  sampling=SamplingConfig(steps=5, guidance=3.0, batch_size=2))
    # PNDM makes one more UNet call than it has steps; the repeated t shows up twice
    assert len(cap.timesteps) == 6
    assert len(set(cap.timesteps.tolist())) == 5
    layer = cap.layers[0]
    assert cap.sumsq[layer].shape[:3] == (3, 6, 2)
    # batching does not change a prompt's statistics
    alone = capture(pipe, ["p two"], seed=0, sampling=SamplingConfig(steps=5, guidance=3.0, batch_size=1))
    np.testing.assert_allclose(alone.sumsq[layer][0], cap.sumsq[layer][1], rtol=1e-4)


def test_capture_chunks_at_multiples_of_the_batch_store_the_same_statistics(tiny_pipe):
    """A capture job's prompts (config activations.chunk_size) cut at multiples of sampling.batch_size keep every
    batch as it was: one job of 6 prompts stores bit for bit what jobs of 2 + 4 store (config.yaml's 160 vs 32)."""
    prompts, sampling = [f"prompt {i}" for i in range(6)], SamplingConfig(steps=3, guidance=3.0, batch_size=2)
    whole = capture(tiny_pipe, prompts, seed=0, sampling=sampling)
    parts = [capture(tiny_pipe, prompts[a:b], seed=0, sampling=sampling) for a, b in [(0, 2), (2, 6)]]
    for layer in whole.layers:
        np.testing.assert_array_equal(whole.sumsq[layer], np.concatenate([p.sumsq[layer] for p in parts]))


def test_capture_refuses_without_guidance(tiny_pipe):
    with pytest.raises(InputError, match="guidance"):
        capture(tiny_pipe, ["x"], seed=0, sampling=SamplingConfig(steps=2, guidance=1.0))


def test_reference_variant_normalises_tokens(tiny_pipe):
    unet = tiny_pipe.unet
    layers = ffn_layers(unet)
    rec = FFNInputRecorder.for_unet(unet, layers)
    with rec.recording(calls=2, batch=2, normalize_tokens=True):
        tiny_pipe(prompt=["x"], num_inference_steps=2, guidance_scale=2.0, output_type="np")
    sumsq = rec.result()
    # each token's vector has unit norm, so the features' squares sum to the number of tokens
    name, lin = layers[0]
    n_tokens = sumsq[name].sum(-1)
    assert np.allclose(n_tokens, n_tokens.flat[0]) and n_tokens.flat[0] > 1


def test_model_without_geglu_layers_is_refused():
    from diffusers import UNet2DModel

    with pytest.raises(InputError, match="GEGLU"):
        ffn_layers(UNet2DModel(sample_size=8, block_out_channels=(16, 32), norm_num_groups=8,
                               down_block_types=("DownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "UpBlock2D")))


def test_testbed_layers_in_execution_order(tiny_pipe):
    names = [n for n, _ in ffn_layers(tiny_pipe.unet)]
    blocks = [n.split(".")[0] for n in names]
    assert blocks == ["down_blocks"] * 2 + ["mid_block"] + ["up_blocks"] * 4
