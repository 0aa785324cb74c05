"""Prediction types by construction: one model written as an epsilon, a v and a sample predictor gives the same
images and the same numbers and decisions from every method that reads the UNet's output.

The shipped testbed's UNet (epsilon) is wrapped exactly: with x_t = a x0 + s eps (a = sqrt(alpha_bar_t),
s = sqrt(1 - alpha_bar_t)) and x0_hat = (x_t - s eps_hat) / a, the v model returns a eps_hat - s x0_hat and the
sample model x0_hat, each under the same scheduler with its `prediction_type` set. The formulas are written here,
not taken from memprune.prediction, so the test also holds that module to the scheduler's own conventions.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO

KINDS = ("epsilon", "v_prediction", "sample")
PROMPTS = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()
CONTROLS = (REPO / "resources/prompts/testbed/generalization.txt").read_text().splitlines()


def _reparametrised_unet(unet, alphas_cumprod, kind: str):
    """A copy of the epsilon UNet `unet` that outputs `kind` (same weights, same module names for hooks)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    base = type(unet)

    class Reparametrised(base):
        def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
            eps = base.forward(self, sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
            index = torch.as_tensor(timestep).long().reshape(-1).cpu()
            alpha_bar = alphas_cumprod.float()[index].to(eps.device).view(-1, 1, 1, 1)
            a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            x0 = (sample.float() - s * eps.float()) / a
            out = (a * eps.float() - s * x0) if kind == "v_prediction" else x0
            out = out.to(eps.dtype)
            return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    wrapped = copy.deepcopy(unet)
    wrapped.__class__ = Reparametrised
    return wrapped


@pytest.fixture(scope="module")
def pipes():
    """{kind: pipeline}: the shipped testbed as an epsilon, a v and a sample model."""
    from memprune.models import load_pipeline

    eps = load_pipeline(REPO / "resources/testbed", "cpu", "float32")
    out = {"epsilon": eps}
    for kind in KINDS[1:]:
        scheduler = type(eps.scheduler).from_config(eps.scheduler.config, prediction_type=kind)
        unet = _reparametrised_unet(eps.unet, eps.scheduler.alphas_cumprod, kind)
        out[kind] = type(eps)(**{**eps.components, "unet": unet, "scheduler": scheduler})
    return out


def _cfg(**kw):
    from memprune.sampling import SamplingConfig

    return SamplingConfig(**{"steps": 10, "guidance": 2.0, "batch_size": 8, **kw})


def _same_images(a, b, what):
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01, f"{what}: max {diff.max()}, {(diff > 0).mean():.3%} differ"


@pytest.mark.parametrize("kind", KINDS[1:])
def test_the_reparametrised_model_samples_the_same_images(pipes, kind):
    from memprune.sampling import generate

    prompts, seeds = PROMPTS[:3] + CONTROLS[:1], [0, 1, 2, 3]
    _same_images(generate(pipes[kind], prompts, seeds, _cfg()), generate(pipes["epsilon"], prompts, seeds, _cfg()),
                 f"{kind} sampling")


@pytest.mark.parametrize("kind", KINDS[1:])
def test_nemo_finds_the_same_neurons(pipes, kind):
    from memprune.localize import nemo
    from memprune.sampling import text_embeddings

    def run(pipe):
        layers = nemo.value_layers(pipe.unet)
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        probe = nemo.Probe(pipe.unet, scheduler, layers, seeds=list(range(6)), steps=50, step_index=1)
        calib = text_embeddings(pipe, CONTROLS[:8])
        scores = np.array([nemo.pairwise_max(probe.deltas(calib[i : i + 1])).max() for i in range(len(calib))])
        act = nemo.text_activations(layers, calib)
        mean, std = act.mean(0), act.std(0, ddof=1)
        threshold = nemo.threshold_of(scores)
        embeds = text_embeddings(pipe, PROMPTS[:2])
        a = nemo.text_activations(layers, embeds)
        found = [nemo.nemo_search(probe, embeds[i : i + 1], a[i], nemo.zscores(a[i], mean, std), threshold,
                                  {**nemo.DEFAULTS, "max_refine": 20}) for i in range(len(embeds))]
        return scores, found

    scores_e, found_e = run(pipes["epsilon"])
    scores_k, found_k = run(pipes[kind])
    np.testing.assert_allclose(scores_k, scores_e, atol=2e-4)
    for e, k in zip(found_e, found_k):
        assert k["score"] == pytest.approx(e["score"], abs=2e-4)
        for key in ("memorized", "initial", "refined", "theta", "rounds"):
            assert k[key] == e[key], key


@pytest.mark.parametrize("kind", KINDS[1:])
def test_wen_detection_and_mitigation_are_the_same(pipes, kind):
    from memprune.attacks.detection import detection_scores
    from memprune.mitigate.wen import wen_mitigated_embeddings
    from memprune.sampling import generate

    prompts, seeds = PROMPTS[:2] + CONTROLS[:2], [0, 1]
    scores = {k: detection_scores(pipes[k], prompts, seeds, steps=10, score_steps=2, guidance=2.0)
              for k in ("epsilon", kind)}
    np.testing.assert_allclose(scores[kind], scores["epsilon"], rtol=1e-4)

    out = {}
    for k in ("epsilon", kind):
        embeds, info = wen_mitigated_embeddings(pipes[k], prompts, seeds * 2, _cfg(), lr=0.05, max_iters=5,
                                                target_loss=float(np.median(scores["epsilon"])))
        out[k] = embeds, info, generate(pipes[k], prompts, seeds * 2, _cfg(), prompt_embeds=embeds)
    np.testing.assert_allclose(out[kind][1]["initial_loss"], out["epsilon"][1]["initial_loss"], rtol=1e-4)
    assert out[kind][1]["iterations"].tolist() == out["epsilon"][1]["iterations"].tolist()
    assert 0 < out["epsilon"][1]["iterations"].sum() < 5 * len(prompts)  # some stop early, some optimise
    torch.testing.assert_close(out[kind][0], out["epsilon"][0], atol=1e-3, rtol=1e-3)
    _same_images(out[kind][2], out["epsilon"][2], f"{kind} Wen mitigated")


@pytest.mark.parametrize("kind", KINDS[1:])
def test_jain_guidance_is_the_same(pipes, kind):
    from memprune.mitigate.jain import guided_sample
    from memprune.sampling import text_embeddings

    seeds = [0, 1, 2, 3]
    for mode in ("dynamic", "static"):
        out = {k: guided_sample(pipes[k], text_embeddings(pipes[k], PROMPTS[:2] * 2), seeds, _cfg(), mode=mode,
                                guidance_before=1.0 if mode == "dynamic" else 0.0) for k in ("epsilon", kind)}
        assert out[kind][1]["transition_step"].tolist() == out["epsilon"][1]["transition_step"].tolist()
        _same_images(out[kind][0], out["epsilon"][0], f"{kind} Jain {mode}")


@pytest.mark.parametrize("kind", KINDS[1:])
def test_recovery_and_extraction_are_the_same(pipes, kind):
    from memprune import variants
    from memprune.attacks.extraction import generate_candidates
    from memprune.attacks.recovery import RecoverySpec, attack_targets
    from memprune.sampling import generate

    images = generate(pipes["epsilon"], PROMPTS[:2], [7, 7], _cfg())  # the targets: the model's own copies
    targets = [{"prompt": p, "group": "g", "image": im, "unrelated": CONTROLS[0]} for p, im in zip(PROMPTS[:2], images)]
    spec = RecoverySpec(steps=8, lr=0.1, batch_size=4, seeds=[0, 1], sample_steps=10)
    res = {k: attack_targets(pipes[k], variants.get("none"), {}, targets, ["unrelated"], spec, CONTROLS[:8])
           for k in ("epsilon", kind)}
    np.testing.assert_allclose(res[kind]["loss"], res["epsilon"]["loss"], rtol=2e-3)
    np.testing.assert_allclose(res[kind]["embedding"], res["epsilon"]["embedding"], atol=2e-3)
    np.testing.assert_allclose(res[kind]["after"], res["epsilon"]["after"], atol=0.02)

    found = {k: generate_candidates(pipes[k], PROMPTS[:2], [0, 1, 2, 3], _cfg(), references=[im[None] for im in images])
             for k in ("epsilon", kind)}
    np.testing.assert_allclose(found[kind]["distance"], found["epsilon"]["distance"], atol=2e-3)
    np.testing.assert_allclose(found[kind]["ssim_truth"], found["epsilon"]["ssim_truth"], atol=2e-3)


def test_conversions_invert_each_other_and_match_the_scheduler():
    from diffusers import DDIMScheduler

    from memprune.prediction import from_epsilon, to_epsilon, to_x0, training_target

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([10, 500, 990])
    for kind in KINDS:
        sched = DDIMScheduler(prediction_type=kind)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        out = training_target(sched, x0, eps, t)  # what a perfect model outputs
        torch.testing.assert_close(to_epsilon(out, x_t, t, sched), eps, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(to_x0(out, x_t, t, sched), x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(from_epsilon(eps, x_t, t, sched), out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        to_epsilon(eps, x0, t, SimpleNamespace(config={"prediction_type": "flow"}))
