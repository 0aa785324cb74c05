"""What a UNet's output means: the one place that turns it into epsilon or x0, from the scheduler's
`prediction_type` (epsilon, v_prediction, sample).

With x_t = a x0 + s eps, a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t) (x_t is the UNet's input, after the
scheduler's `scale_model_input`):
    v = a eps - s x0          eps = a v + s x_t          x0 = a x_t - s v
    sample predicts x0        eps = (x_t - a x0) / s
SD1.x and `stabilityai/stable-diffusion-2-base` predict epsilon, `stabilityai/stable-diffusion-2` (768 px) predicts
v. Every method defined on epsilon (NeMo's noise difference, Wen et al.'s text-conditional norm, Jain et al.'s
dynamic transition, the recovery attack's denoising loss) reads the UNet through `to_epsilon`, so its numbers
and decisions are the same for one model written as any of the three.
"""

from __future__ import annotations

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    """The scheduler's prediction type, checked against the three this module converts."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {kind!r} is not one of {list(PREDICTION_TYPES)}")
    return kind


def signal_noise(scheduler, t, like):
    """(a, s) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) for timestep(s) `t` (a number, a 0-d tensor or one per
    sample), shaped to broadcast against `like` (N, C, H, W) and on its device, in float32."""
    import torch

    alphas = scheduler.alphas_cumprod.to(torch.float32)
    index = torch.as_tensor(t).detach().to("cpu").long().reshape(-1)
    alpha_bar = alphas[index].to(like.device).view(-1, *([1] * (like.dim() - 1)))
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def to_epsilon(output, x_t, t, scheduler):
    """The noise prediction (float32) of a UNet `output` at input `x_t` and timestep(s) `t`."""
    kind = prediction_type(scheduler)
    output = output.float()
    if kind == "epsilon":
        return output
    a, s = signal_noise(scheduler, t, output)
    if kind == "v_prediction":
        return a * output + s * x_t.float()
    return (x_t.float() - a * output) / s


def to_x0(output, x_t, t, scheduler):
    """The clean-sample prediction (float32) of a UNet `output` at input `x_t` and timestep(s) `t`."""
    kind = prediction_type(scheduler)
    output = output.float()
    if kind == "sample":
        return output
    a, s = signal_noise(scheduler, t, output)
    if kind == "v_prediction":
        return a * x_t.float() - s * output
    return (x_t.float() - s * output) / a


def from_epsilon(eps, x_t, t, scheduler):
    """The output a model of the scheduler's prediction type gives when its noise prediction is `eps` (float32):
    the inverse of `to_epsilon` (what a training target or an exact re-parametrised model needs)."""
    kind = prediction_type(scheduler)
    eps = eps.float()
    if kind == "epsilon":
        return eps
    a, s = signal_noise(scheduler, t, eps)
    x0 = (x_t.float() - s * eps) / a
    return a * eps - s * x0 if kind == "v_prediction" else x0


def training_target(scheduler, x0, noise, t):
    """What the model is trained to output for x_t = a x0 + s noise: noise, v, or x0 (its own training loss)."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    a, s = signal_noise(scheduler, t, x0)
    return a * noise - s * x0
