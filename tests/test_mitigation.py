"""Wen et al.'s inference-time mitigation: optimise the prompt embedding so that the first step's
text-conditional prediction shrinks, then sample with it."""

import numpy as np
import pytest
import torch

from conftest import BPE, tiny_spec

PROMPTS = ["a red circle on a blue background", "a green square", "photo of a cat", "x"]
SEEDS = [0, 1, 2, 3]


def cfg(batch_size=4):
    from memprune.sampling import SamplingConfig

    return SamplingConfig(steps=4, guidance=3.0, batch_size=batch_size)


def text_embeddings(pipe, prompts):
    with torch.no_grad():
        return pipe.encode_prompt(prompts, pipe.unet.device, 1, False)[0]


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_optimisation_lowers_its_own_loss_and_keeps_shapes(tiny_pipe):
    from memprune.mitigate.wen import wen_mitigated_embeddings

    embeds, info = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), lr=0.05, max_iters=5, target_loss=None)
    assert embeds.shape == text_embeddings(tiny_pipe, PROMPTS).shape
    assert all(info[k].shape == (4,) for k in ("initial_loss", "final_loss", "iterations", "converged"))
    assert np.all(info["iterations"] == 5)
    assert np.all(info["final_loss"] < info["initial_loss"])
    # the BOS token is held fixed; the others move
    original = text_embeddings(tiny_pipe, PROMPTS)
    assert torch.equal(embeds[:, 0], original[:, 0]) and not torch.allclose(embeds[:, 1:], original[:, 1:])


def test_initial_loss_is_the_l2_norm_of_the_text_conditional_prediction(tiny_pipe):
    from memprune.sampling import _initial_latents
    from memprune.mitigate.wen import wen_mitigated_embeddings

    _, info = wen_mitigated_embeddings(tiny_pipe, PROMPTS[:2], SEEDS[:2], cfg(), max_iters=0)
    sched = tiny_pipe.scheduler
    sched.set_timesteps(4)
    t0 = sched.timesteps[0]
    gens = [torch.Generator().manual_seed(s) for s in SEEDS[:2]]
    x = sched.scale_model_input(_initial_latents(tiny_pipe, gens, cfg()) * sched.init_noise_sigma, t0)
    with torch.no_grad():
        cond = tiny_pipe.unet(x, t0, encoder_hidden_states=text_embeddings(tiny_pipe, PROMPTS[:2])).sample
        null = tiny_pipe.unet(x, t0, encoder_hidden_states=text_embeddings(tiny_pipe, ["", ""])).sample
    expected = torch.linalg.vector_norm((cond - null).flatten(1), dim=1).numpy()
    np.testing.assert_allclose(info["initial_loss"], expected, rtol=1e-5)
    assert np.all(info["iterations"] == 0)


def test_stops_per_prompt_when_the_target_is_reached(tiny_pipe):
    from memprune.mitigate.wen import wen_mitigated_embeddings

    _, first = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), max_iters=0)
    # above every initial loss: nothing to do, embeddings unchanged
    embeds, info = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), max_iters=10,
                                            target_loss=float(first["initial_loss"].max()) * 1.01)
    assert np.all(info["iterations"] == 0) and info["converged"].all()
    assert torch.equal(embeds, text_embeddings(tiny_pipe, PROMPTS))
    # between: prompts already below stop at once, the others run until they reach it or run out of steps
    target = float(np.median(first["initial_loss"]))
    embeds, info = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), max_iters=30, target_loss=target)
    below = first["initial_loss"] <= target
    assert np.all(info["iterations"][below] == 0) and np.all(info["iterations"][~below] > 0)
    assert np.all((info["final_loss"] <= target) | (info["iterations"] == 30))
    assert np.all(info["final_loss"][info["iterations"] < 30] <= target)
    assert np.all(info["final_loss"][~below] < first["initial_loss"][~below])
    original = text_embeddings(tiny_pipe, PROMPTS)
    assert torch.equal(embeds[below], original[below])


def test_deterministic_and_independent_of_the_batch_cut(tiny_pipe):
    from memprune.mitigate.wen import wen_mitigated_embeddings

    a, info_a = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(4), max_iters=3, target_loss=None)
    b, info_b = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(4), max_iters=3, target_loss=None)
    assert torch.equal(a, b) and np.array_equal(info_a["final_loss"], info_b["final_loss"])
    c, _ = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(3), max_iters=3, target_loss=None)
    # batched convolutions round differently; Adam's normalised steps carry that over, so not bit-equal
    torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-3)


def test_generation_with_the_embeddings_keeps_the_null_prompt_unconditional(tiny_pipe):
    """Unoptimised embeddings give exactly the prompt's images: the negative branch is the null prompt's."""
    from memprune.sampling import generate
    from memprune.mitigate.wen import wen_mitigated_embeddings

    unchanged, _ = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), max_iters=0)
    plain = generate(tiny_pipe, PROMPTS, SEEDS, cfg())
    assert np.array_equal(generate(tiny_pipe, PROMPTS, SEEDS, cfg(), prompt_embeds=unchanged), plain)
    mitigated, _ = wen_mitigated_embeddings(tiny_pipe, PROMPTS, SEEDS, cfg(), lr=0.5, max_iters=5, target_loss=None)
    images = generate(tiny_pipe, PROMPTS, SEEDS, cfg(), prompt_embeds=mitigated)
    assert images.shape == plain.shape and not np.array_equal(images, plain)


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_works_for_v_prediction(tmp_path):
    from memprune.models import load_pipeline
    from memprune.mitigate.wen import wen_mitigated_embeddings
    from memprune.testbed.model import save_untrained_pipeline

    model = save_untrained_pipeline(tmp_path / "v", BPE, tiny_spec(), prediction_type="v_prediction")
    pipe = load_pipeline(model, "cpu", "float32")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    embeds, info = wen_mitigated_embeddings(pipe, PROMPTS[:2], SEEDS[:2], cfg(), max_iters=4, target_loss=None)
    assert embeds.shape[0] == 2 and np.all(info["final_loss"] < info["initial_loss"])


def test_bad_arguments():
    from memprune.mitigate.wen import wen_mitigated_embeddings

    with pytest.raises(ValueError, match="seeds"):
        wen_mitigated_embeddings(None, ["a"], [0, 1], cfg())


def test_wen_variant_through_eval_sample_records_its_optimisation(tiny_model, tiny_pipe, tmp_path):
    """`eval-sample --variant wen`: the registry's Wen variant gives exactly the mitigated images, and timing.json
    keeps Wen's entries (per-image info averaged over every image)."""
    import json

    from memprune.evaluate.sample import sample_variant
    from memprune.sampling import generate
    from memprune.mitigate.wen import wen_mitigated_embeddings

    (tmp_path / "mem.txt").write_text("".join(p + "\n" for p in PROMPTS[:2]))
    params = {"lr": 0.05, "max_iters": 3, "target_loss": None}
    sample_variant("wen", tiny_model, tmp_path / "out", tmp_path / "mem.txt", [0, 1], cfg(), params=params,
                   device="cpu", dtype="float32")
    flat_p, flat_s = [p for p in PROMPTS[:2] for _ in (0, 1)], [0, 1, 0, 1]
    embeds, info = wen_mitigated_embeddings(tiny_pipe, flat_p, flat_s, cfg(), **params)
    expected = generate(tiny_pipe, flat_p, flat_s, cfg(), prompt_embeds=embeds)
    from PIL import Image

    got = np.stack([np.asarray(Image.open(tmp_path / "out" / f"{i:05d}_s{s}.png")) for i, s in enumerate(flat_s)])
    assert np.array_equal(got, expected)
    timing = json.loads((tmp_path / "out" / "timing.json").read_text())
    assert timing["variant"] == "wen" and 0 < timing["wen_seconds"] <= timing["seconds"]
    assert (timing["wen_lr"], timing["wen_max_iters"], timing["wen_target_loss"]) == (0.05, 3, None)
    assert timing["wen_mean_iterations"] == 3.0 and timing["wen_converged_fraction"] == 0.0
    assert timing["wen_mean_initial_loss"] == pytest.approx(info["initial_loss"].mean())
    assert timing["wen_mean_final_loss"] == pytest.approx(info["final_loss"].mean())


def test_wen_info_of_timed_chunks_is_concatenated_and_its_seconds_summed():
    from memprune.evaluate.sample import _combine_info

    def chunk(iterations, converged, loss, seconds):
        return {"iterations": np.array(iterations), "converged": np.array(converged), "initial_loss": np.array(loss),
                "final_loss": np.array(loss) / 2, "wen_seconds": seconds, "wen_lr": 0.05, "wen_max_iters": 10,
                "wen_target_loss": 0.9}

    got = _combine_info("wen", [chunk([1, 2, 3], [True, False, True], [1.0, np.nan, 3.0], 2.0),
                                chunk([6], [True], [8.0], 0.5)], [3, 1])
    assert got == {"wen_seconds": 2.5, "wen_lr": 0.05, "wen_max_iters": 10, "wen_target_loss": 0.9,
                   "wen_mean_iterations": 3.0, "wen_converged_fraction": 0.75, "wen_mean_initial_loss": 4.0,
                   "wen_mean_final_loss": 2.0}
    assert list(got)[:4] == ["wen_seconds", "wen_lr", "wen_max_iters", "wen_target_loss"]


# ---------------------------------------------------------------------------------------------- Jain et al.


def _reference_switched_guidance(pipe, prompts, seeds, cfg, transition_t):
    """An independent loop: the unconditional prediction alone (guidance 0 is exactly that) while t > transition_t,
    then plain classifier-free guidance with cfg.guidance; one image at a time."""
    from memprune.sampling import _initial_latents

    sched, unet = pipe.scheduler, pipe.unet
    out = []
    for prompt, seed in zip(prompts, seeds):
        with torch.no_grad():
            cond = pipe.encode_prompt([prompt], "cpu", 1, False)[0]
            null = pipe.encode_prompt([""], "cpu", 1, False)[0]
            sched.set_timesteps(cfg.steps)
            x = _initial_latents(pipe, [torch.Generator().manual_seed(seed)], cfg) * sched.init_noise_sigma
            for t in sched.timesteps:
                xin = sched.scale_model_input(x, t)
                if t > transition_t:
                    eps = unet(xin, t, encoder_hidden_states=null).sample
                else:
                    u = unet(xin, t, encoder_hidden_states=null).sample
                    c = unet(xin, t, encoder_hidden_states=cond).sample
                    eps = u + cfg.guidance * (c - u)
                x = sched.step(eps, t, x).prev_sample
            image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
        out.append(((image[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return np.stack(out)


def test_jain_static_point_is_plain_sampling_with_the_guidance_switched_there(tiny_pipe):
    from memprune.mitigate.jain import guided_sample
    from memprune.sampling import text_embeddings

    c = cfg()  # 4 DDIM steps: timesteps 751, 501, 251, 1
    got, info = guided_sample(tiny_pipe, text_embeddings(tiny_pipe, PROMPTS), SEEDS, c, mode="static",
                              transition_t=500, guidance_before=0.0)
    expected = _reference_switched_guidance(tiny_pipe, PROMPTS, SEEDS, c, 500)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert np.all(info["transition_step"] == 2) and np.all(info["transition_t"] == 251)
    plain = _reference_switched_guidance(tiny_pipe, PROMPTS, SEEDS, c, 1000)
    assert np.abs(got.astype(int) - plain.astype(int)).max() > 1  # withholding guidance changes the images


def test_jain_with_the_point_before_the_first_step_is_diffusers_sampling(tiny_pipe):
    """Guidance from the first step on is the pipeline's own sampling, bit for bit; batches cut differently agree."""
    from memprune.mitigate.jain import guided_sample
    from memprune.sampling import generate, text_embeddings

    embeds = text_embeddings(tiny_pipe, PROMPTS)
    got, info = guided_sample(tiny_pipe, embeds, SEEDS, cfg(), mode="static", transition_t=1000, guidance_before=0.0)
    assert np.array_equal(got, generate(tiny_pipe, PROMPTS, SEEDS, cfg()))
    assert np.all(info["transition_step"] == 0)
    cut, _ = guided_sample(tiny_pipe, embeds, SEEDS, cfg(3), mode="static", transition_t=1000)
    assert np.abs(cut.astype(int) - got.astype(int)).max() <= 1


def test_jain_dynamic_point_is_the_first_local_minimum_of_the_guidance_difference(tiny_pipe):
    from memprune.mitigate.jain import guided_sample, turned
    from memprune.sampling import text_embeddings

    assert not turned([3.0, 2.0]) and turned([3.0, 2.0, 2.5])
    assert not turned([3.0, 2.0, 1.0]) and not turned([1.0, 2.0, 3.0])
    c = SamplingConfig_steps(10)
    embeds = text_embeddings(tiny_pipe, PROMPTS)
    got, info = guided_sample(tiny_pipe, embeds, SEEDS, c, mode="dynamic", guidance_before=1.0)
    never, _ = guided_sample(tiny_pipe, embeds, SEEDS, c, mode="static", transition_t=-1.0, guidance_before=1.0)
    at_once, _ = guided_sample(tiny_pipe, embeds, SEEDS, c, mode="static", transition_t=1000.0)
    tiny_pipe.scheduler.set_timesteps(10)
    timesteps = tiny_pipe.scheduler.timesteps.numpy()
    for i in range(len(SEEDS)):
        step = info["transition_step"][i]
        assert step == -1 or step >= 2
        assert np.isnan(info["transition_t"][i]) if step == -1 else info["transition_t"][i] == timesteps[step]
        if step == -1:  # no minimum: guidance 1 throughout, as their script
            assert np.array_equal(got[i], never[i])
        elif step == 0:
            assert np.array_equal(got[i], at_once[i])


def SamplingConfig_steps(steps):
    from memprune.sampling import SamplingConfig

    return SamplingConfig(steps=steps, guidance=3.0, batch_size=4)


def test_jain_variant_reads_its_mode_blocks_and_generates_from_embeddings(tiny_pipe):
    from memprune import variants
    from memprune.errors import InputError
    from memprune.sampling import text_embeddings
    from memprune.variants.jain import schedule

    assert schedule({"mode": "opposite"}) == {"mode": "opposite", "transition_t": 650.0, "guidance_before": -2.0}
    assert schedule({"mode": "static", "static": {"transition_t": 300}})["transition_t"] == 300.0
    with pytest.raises(InputError, match="mitigation.jain.mode"):
        schedule({"mode": "sometimes"})
    v = variants.get("jain")
    assert v.attacked_as == "none"
    images, _ = v.generate(tiny_pipe, PROMPTS, SEEDS, cfg(), v.default_params)
    from_embeds, _ = v.generate_embeds(tiny_pipe, text_embeddings(tiny_pipe, PROMPTS), SEEDS, cfg(), v.default_params)
    assert np.array_equal(images, from_embeds)
    opposite, _ = v.generate(tiny_pipe, PROMPTS, SEEDS, cfg(), {**v.default_params, "mode": "opposite"})
    assert not np.array_equal(images, opposite)


# ---------------------------------------------------------------------------------------------- Ren et al.


def test_ren_leaves_unflagged_images_bit_identical(tiny_pipe):
    from memprune.mitigate.ren import ren_generate
    from memprune.sampling import generate

    plain = generate(tiny_pipe, PROMPTS, SEEDS, cfg())
    got, info = ren_generate(tiny_pipe, SEEDS, cfg(), prompts=PROMPTS, threshold=np.inf)
    assert not info["flagged"].any() and np.array_equal(got, plain)
    # flag half: the other half stays bit-identical within the same batches
    threshold = float(np.median(info["entropy"]))
    half, info = ren_generate(tiny_pipe, SEEDS, cfg(), prompts=PROMPTS, threshold=threshold, c1=3.0)
    flagged = info["flagged"]
    assert 0 < flagged.sum() < len(flagged)
    assert np.array_equal(half[~flagged], plain[~flagged])
    assert all(not np.array_equal(half[i], plain[i]) for i in np.flatnonzero(flagged))


def test_ren_processor_rescales_the_bos_logit_and_masks_padding(tiny_pipe):
    """The recomputed rows: c1 = 1 without a mask is diffusers' attention; c1 scales exactly token 0's logit."""
    from memprune.mitigate.ren import attention_logits, cross_attention_layers, rescaled_attention

    _, attn = cross_attention_layers(tiny_pipe.unet)[0]
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 16, attn.query_dim, generator=gen)
    e = torch.randn(2, 20, attn.cross_attention_dim, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(rescaled_attention(attn, h, e, [False, False], [None, None], 1.0), attn(h, e),
                                   rtol=1e-5, atol=1e-6)
        logits, v = attention_logits(attn, h, e)
        logits[1, ..., 0] *= 1.25
        logits[1, ..., 5:] = -torch.inf
        p = torch.softmax(logits, -1)
        expected = attn.to_out[0]((p @ v).transpose(1, 2).reshape(2, 16, -1))
        torch.testing.assert_close(rescaled_attention(attn, h, e, [False, True], [None, 5], 1.25), expected, rtol=1e-5,
                                   atol=1e-6)


def test_ren_detector_is_the_entropy_of_the_first_step_attention(tiny_pipe):
    from memprune.mitigate.ren import cross_attention_layers, entropy, first_step_entropy
    from memprune.sampling import text_embeddings

    names = [n for n, _ in cross_attention_layers(tiny_pipe.unet)]
    assert names[0].startswith("down_blocks") and names[-1].startswith("up_blocks")
    assert (names.index(next(n for n in names if n.startswith("mid_block")))
            < names.index(next(n for n in names if n.startswith("up_blocks"))))
    np.testing.assert_allclose(entropy(np.full((1, 4), 0.25)), [np.log(4)])
    embeds = text_embeddings(tiny_pipe, PROMPTS)
    scores = first_step_entropy(tiny_pipe, embeds, SEEDS, cfg())
    assert scores.shape == (4,) and np.all((scores > 0) & (scores <= np.log(20) + 1e-9))
    single = first_step_entropy(tiny_pipe, embeds, SEEDS, cfg(), layers=[0])
    assert not np.allclose(single, scores)
    np.testing.assert_allclose(first_step_entropy(tiny_pipe, embeds, SEEDS, cfg(1)), scores, rtol=1e-5)
    from memprune.errors import InputError

    with pytest.raises(InputError, match="detect_layers"):
        first_step_entropy(tiny_pipe, embeds, SEEDS, cfg(), layers=[len(names)])


def test_ren_variant_from_embeddings_flags_and_mitigates(tiny_pipe):
    from memprune import variants
    from memprune.sampling import generate, text_embeddings

    v = variants.get("ren")
    assert v.attacked_as == "none"
    embeds = text_embeddings(tiny_pipe, PROMPTS)
    plain = generate(tiny_pipe, PROMPTS, SEEDS, cfg(), prompt_embeds=embeds)
    got, info = v.generate_embeds(tiny_pipe, embeds, SEEDS, cfg(), {**v.default_params, "detect": False, "c1": 3.0})
    assert info["flagged"].all() and all(not np.array_equal(got[i], plain[i]) for i in range(4))
    got, info = v.generate_embeds(tiny_pipe, embeds, SEEDS, cfg(), {**v.default_params, "threshold": 1e9})
    assert not info["flagged"].any() and np.array_equal(got, plain)
