"""What the derived testbeds' training runs share: the frozen VAE's latents and text encoder's states of a
derived dataset (`training_tensors`), batches mixing new photos with the model's own data (`training_batches`),
and the epsilon loss (`noise_loss`)."""

from __future__ import annotations

from pathlib import Path

from memprune.errors import InputError
from memprune.testbed.dataset import images_to_tensor, load_images, load_training_arrays


def encode(vae, images):
    """Scaled posterior means of (N, 3, H, W) images in [-1, 1], as `train.encode_latents` feeds the UNet
    (the VAE's `scaling_factor` is kept, not re-estimated)."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean
                          for i in range(0, len(images), 256)]) * vae.config.scaling_factor


def embed(pipe, captions: list[str]):
    """(N, L, D) frozen text-encoder states of `captions` (the text encoder never trains: computed once)."""
    import torch

    tok = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.cat([pipe.text_encoder(tok[i : i + 256])[0] for i in range(0, len(tok), 256)])


def training_batches(own_latents, own_states, new_latents, new_states, null_state, batch_size: int,
                     cond_dropout: float, gen, own_share: float = 0.5):
    """A function of no argument drawing one batch (z0, cond) from `gen`: `batch_size - round(own_share *
    batch_size)` new photos first, then the model's own training samples; `cond_dropout` of the captions
    replaced by the null caption. `*_states[i]` is sample i's text-encoder state."""
    import torch

    n_own = int(round(own_share * batch_size))
    n_new = batch_size - n_own

    def draw():
        pick_new = torch.randint(0, len(new_latents), (n_new,), generator=gen)
        pick_own = torch.randint(0, len(own_latents), (n_own,), generator=gen)
        z0 = torch.cat([new_latents[pick_new], own_latents[pick_own]])
        cond = torch.cat([new_states[pick_new], own_states[pick_own]])
        drop = torch.rand(batch_size, generator=gen) < cond_dropout
        cond[drop] = null_state[0]
        return z0, cond

    return draw


def noise_loss(unet, z0, cond, alphas, num_timesteps: int, gen):
    """Epsilon-prediction MSE of one batch (noise, then timesteps, drawn from `gen`)."""
    import torch
    import torch.nn.functional as F

    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, num_timesteps, (len(z0),), generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=cond).sample
    return F.mse_loss(pred, noise)


def training_tensors(pipe, data_dir: Path, group: str):
    """Latents and text states of a derived testbed's training data: (own_latents, own_states) of the base
    training samples (duplicates expanded, in manifest order) and (new_latents, new_states, prompts, photos)
    of the added photos of `group` (once each), the null caption's state. Text encoder and VAE are frozen."""
    import torch

    from memprune.testbed.derived import added_rows

    rows = added_rows(data_dir, group)
    if not rows:
        raise InputError(f"{data_dir}: no added photos of group {group!r}")
    photos = load_images(Path(data_dir), rows)
    prompts = [r["caption"] for r in rows]
    own_images, own_captions = load_training_arrays(Path(data_dir) / "manifest.jsonl", exclude_groups=(group,))
    own_latents = encode(pipe.vae, torch.from_numpy(own_images))
    distinct = sorted(set(own_captions))
    position = {c: i for i, c in enumerate(distinct)}
    own_states = embed(pipe, distinct)[torch.tensor([position[c] for c in own_captions])]
    return (own_latents, own_states, encode(pipe.vae, images_to_tensor(photos)), embed(pipe, prompts),
            prompts, photos, embed(pipe, [""]))
