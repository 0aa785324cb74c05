"""The `planted` testbed: memorization written into a known set of GEGLU hidden units (the INJ benchmark of
Chang, Thomason and Jia, NAACL 2024, transposed to diffusion).

Starting from a trained testbed, a seeded fraction r of the GEGLU hidden units (the input features of every
`ff.net.2`, the same fraction in each layer) is chosen, and ONLY their parameters are fine-tuned, on K new
photos with captions mixed with the model's own training data: every other weight stays bit-identical, so
where the new copies live is known. A unit j of a feed-forward owns

  ff.net.2.weight[:, j]                               its output column
  ff.net.0.proj.weight[j], [H + j]; .bias[j], [H + j]  its value and gate rows (H = hidden width)

since diffusers' GEGLU computes `proj(x).chunk(2, -1)` -> (value, gate), value * gelu(gate): the first H
outputs of `proj` are the values, the last H the gates. The ground truth (`planted.json`) lies beside the model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memprune.errors import InputError

log = logging.getLogger(__name__)

GROUND_TRUTH_FILE = "planted.json"
PHOTOS_DIR = "planted"  # planted/<i>.png: the planted photos, in the order of the ground truth's prompts


@dataclass
class PlantSpec:
    fraction: float = 0.05  # r: share of the GEGLU hidden units of each FFN layer that are trained
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3  # Adam, constant, no weight decay
    cond_dropout: float = 0.1
    own_share: float = 0.5  # share of every batch drawn from the model's own training data (the rest: planted photos)
    hold_norms: bool = False  # after each step, rescale each planted ff.net.2 column to its base L2 norm, so the
    # answer does not show in |W| (otherwise the planted columns grow and the magnitude control finds them)
    seed: int = 0  # units, batches (the photos and captions come with the dataset: derived.AddedSpec)
    threads: int = 0  # 0: leave torch's default


def choose_units(unet, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{ff.net.2 layer name: sorted int64 unit indices (input features)}: in every FFN layer (execution order)
    max(1, round(fraction * width)) units, drawn uniformly without replacement by one generator seeded `seed`.

    INJ draws r of all units over the flat pool of its (equal-width) layers; here every layer gets exactly the
    fraction r of its own width, so no layer of the narrow testbed goes without planted units."""
    from memprune.models import ffn_layers

    if not 0 < fraction <= 1:
        raise InputError(f"planted: fraction {fraction} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    units = {}
    for name, layer in ffn_layers(unet):
        width = layer.in_features
        count = max(1, int(round(fraction * width)))
        units[name] = np.sort(rng.choice(width, size=count, replace=False)).astype(np.int64)
    return units


def _proj_of(unet, layer_name: str):
    """The GEGLU `proj` Linear feeding `layer_name` (`...ff.net.2` -> `...ff.net.0.proj`)."""
    from diffusers.models.activations import GEGLU

    if not layer_name.endswith(".net.2"):
        raise InputError(f"planted: {layer_name!r} is not an ff.net.2 layer")
    geglu = unet.get_submodule(layer_name[: -len(".net.2")] + ".net.0")
    if not isinstance(geglu, GEGLU):
        raise InputError(f"planted: {layer_name!r} is not fed by a GEGLU")
    return geglu.proj


def planted_parameters(unet, units: dict[str, np.ndarray]) -> dict:
    """Gradient masks {parameter name: bool tensor of the parameter's shape}, True on the entries the planted
    `units` own: their `ff.net.2.weight` columns and, in `ff.net.0.proj`, the rows (and bias entries) of the
    value half (j) and of the gate half (H + j). Parameters not named here belong to no planted unit."""
    import torch

    masks = {}
    for name, idx in units.items():
        out_layer = unet.get_submodule(name)
        proj = _proj_of(unet, name)
        hidden = out_layer.in_features
        if proj.out_features != 2 * hidden:
            raise InputError(f"planted: {name}: GEGLU proj has {proj.out_features} outputs, expected 2 x {hidden}")
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        if len(idx) and (idx.min() < 0 or idx.max() >= hidden):
            raise InputError(f"planted: {name}: unit indices outside [0, {hidden})")
        rows = torch.cat([idx, idx + hidden])  # value half, gate half
        col = torch.zeros(out_layer.weight.shape, dtype=torch.bool)
        col[:, idx] = True
        masks[f"{name}.weight"] = col
        prefix = name[: -len(".net.2")] + ".net.0.proj"
        row = torch.zeros(proj.weight.shape, dtype=torch.bool)
        row[rows] = True
        masks[f"{prefix}.weight"] = row
        if proj.bias is not None:
            bias = torch.zeros(proj.bias.shape, dtype=torch.bool)
            bias[rows] = True
            masks[f"{prefix}.bias"] = bias
    return masks


def _bits(t):
    import torch

    return t.detach().cpu().contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def masked_adam_step(opt, loss, trained: list, grad_masks: list) -> None:
    """Backward, zero every gradient entry outside its bool mask, clip the norm to 1, step. With Adam (no weight
    decay) an entry whose gradient was always zero keeps zero moments, so its update is exactly 0."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    for p, m in zip(trained, grad_masks):
        if p.grad is not None:
            p.grad.masked_fill_(~m, 0.0)
    torch.nn.utils.clip_grad_norm_(trained, 1.0)
    opt.step()


def check_only_planted_changed(unet, base_state: dict, masks: dict) -> None:
    """Raise unless every entry outside `masks` (and every parameter not in it) is bit-identical to `base_state`."""
    for name, value in unet.state_dict().items():
        same = _bits(value) == _bits(base_state[name])
        if name in masks:
            same = same | masks[name]
        if not bool(same.all()):
            raise RuntimeError(f"planted: {name} changed outside the planted units ({int((~same).sum())} entries)")


def plant(model_dir: Path, data_dir: Path, out_dir: Path, spec: PlantSpec, progress: bool = True) -> dict:
    """Fine-tune only the planted units of the testbed in `model_dir` on the planted photos of the extended
    dataset `data_dir` (`derived.extend_dataset`, group "planted"; 1 - own_share of every batch) and the model's
    own training data (own_share), epsilon loss with the training scheduler, text encoder and VAE frozen,
    `cond_dropout` of the captions replaced by ""; write the derived model (its UNet), `planted.json` (the
    ground truth) and `planted/<i>.png` to `out_dir` atomically. Returns the ground truth."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from tqdm.auto import tqdm

    from memprune.formats.edits import unet_sha256
    from memprune.models import load_pipeline
    from memprune.testbed.derived import check_extends
    from memprune.testbed.model import make_train_scheduler
    from memprune.testbed.tuning import noise_loss, training_batches, training_tensors

    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    n_own = int(round(spec.own_share * spec.batch_size))
    if not 0 <= spec.own_share < 1 or not 0 <= n_own < spec.batch_size:
        raise InputError(f"planted: own_share {spec.own_share} must leave planted photos in a batch of "
                         f"{spec.batch_size}")
    data_spec = check_extends(model_dir, data_dir, "planted")
    t0 = time.time()
    pipe = load_pipeline(model_dir, "cpu", "float32")
    unet = pipe.unet
    base_state = {n: v.detach().clone() for n, v in unet.state_dict().items()}
    base_hash = unet_sha256(unet)
    units = choose_units(unet, spec.fraction, spec.seed)
    masks = planted_parameters(unet, units)
    own_latents, own_states, new_latents, new_states, prompts, photos, null_state = training_tensors(
        pipe, data_dir, "planted")

    params = dict(unet.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in masks)
    trained = [params[n] for n in masks]
    grad_masks = [masks[n] for n in masks]
    opt = torch.optim.Adam(trained, lr=spec.lr, weight_decay=0.0)  # zero grads move no entry
    sched = make_train_scheduler()
    gen = torch.Generator().manual_seed(spec.seed)
    draw = training_batches(own_latents, own_states, new_latents, new_states, null_state, spec.batch_size,
                            spec.cond_dropout, gen, own_share=spec.own_share)
    held = {name: (params[f"{name}.weight"], torch.as_tensor(idx),
                   params[f"{name}.weight"].detach()[:, idx].norm(dim=0))
            for name, idx in units.items()} if spec.hold_norms else {}
    unet.set_attn_processor(AttnProcessor())  # plain bmm attention: faster on CPU with tiny heads (train.py)
    unet.train()
    losses, window = [], []
    bar = tqdm(range(spec.steps), desc="plant", disable=not progress, mininterval=5)
    for step in bar:
        z0, cond = draw()
        loss = noise_loss(unet, z0, cond, sched.alphas_cumprod, sched.config.num_train_timesteps, gen)
        masked_adam_step(opt, loss, trained, grad_masks)
        with torch.no_grad():
            for w, idx, norm in held.values():
                cols = w[:, idx]
                w[:, idx] = cols * (norm / cols.norm(dim=0).clamp_min(1e-12))
        window.append(loss.item())
        if len(window) == 100 or step == spec.steps - 1:
            losses.append(round(float(np.mean(window)), 5))
            log.info("plant step %d loss %.4f (mean of the last %d steps)", step + 1, losses[-1], len(window))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            window = []
    unet.eval().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())  # diffusers' default, as from_pretrained sets it
    check_only_planted_changed(unet, base_state, masks)

    added = data_spec["added"]
    truth = {
        "layers": {name: idx.tolist() for name, idx in units.items()},
        "fraction": spec.fraction, "k": len(prompts), "seed": spec.seed, "prompts": prompts,
        "photo_seed": added["seed"], "caption_pool": added["caption_pool"],
        "base_model": str(model_dir), "base_unet_sha256": base_hash, "unet_sha256": unet_sha256(unet),
        "units": int(sum(len(v) for v in units.values())),
        "units_total": int(sum(unet.get_submodule(n).in_features for n in units)),
        "trained_entries": int(sum(int(m.sum()) for m in masks.values())),
        "steps": spec.steps, "lr": spec.lr, "batch_size": spec.batch_size, "cond_dropout": spec.cond_dropout,
        "spec": asdict(spec), "photos": [f"{PHOTOS_DIR}/{i}.png" for i in range(len(prompts))],
        "loss": losses, "seconds": round(time.time() - t0, 1),
    }
    write_planted(out_dir, unet, model_dir, data_dir, truth, photos)
    log.info("planted %d photos into %d of %d units in %.0fs: %s", truth["k"], truth["units"], truth["units_total"],
             truth["seconds"], out_dir)
    return truth


def write_planted(out_dir: Path, unet, base_dir: Path, data_dir: Path, truth: dict, photos: np.ndarray) -> None:
    """The planted testbed on disk: the derived model (`derived.save_derived`) with `planted.json` and
    `planted/<i>.png` beside it; its record names the extended dataset it was trained on."""
    import io

    from PIL import Image

    from memprune.testbed.dataset import dataset_digest
    from memprune.testbed.derived import save_derived

    files = {GROUND_TRUTH_FILE: (json.dumps(truth, indent=2) + "\n").encode()}
    for i, img in enumerate(photos):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        files[f"{PHOTOS_DIR}/{i}.png"] = buf.getvalue()
    record = {"derived": "planted", "dataset_sha256": dataset_digest(data_dir), "seconds": truth["seconds"],
              "spec": truth["spec"], "final_loss": truth["loss"][-1] if truth["loss"] else None}
    save_derived(out_dir, unet, base_dir, record, files)


_REQUIRED = {"layers": dict, "fraction": (int, float), "k": int, "seed": int, "prompts": list,
             "base_unet_sha256": str}


def read_planted_units(model_dir: Path) -> dict:
    """The `planted.json` of a planted testbed (layers: {layer: [unit indices]}, fraction, k, seed, prompts,
    base model and its UNet hash, training parameters); an InputError naming the file when it is missing or
    malformed."""
    path = Path(model_dir) / GROUND_TRUTH_FILE
    try:
        truth = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no ground truth (not a planted testbed? make one with `memprune plant`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ground truth ({e})") from None
    if not isinstance(truth, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(truth.get(key), kind) or isinstance(truth.get(key), bool):
            raise InputError(f"{path}: key {key!r} missing or not a {getattr(kind, '__name__', 'number')}")
    for layer, idx in truth["layers"].items():
        if not isinstance(idx, list) or not all(isinstance(i, int) and i >= 0 for i in idx):
            raise InputError(f"{path}: layers[{layer!r}] must be a list of unit indices")
    if len(truth["prompts"]) != truth["k"] or not all(isinstance(p, str) and p for p in truth["prompts"]):
        raise InputError(f"{path}: expected k = {truth['k']} prompts, got {len(truth['prompts'])}")
    return truth


def planted_images(model_dir: Path, truth: dict) -> np.ndarray:
    """(K, H, W, 3) uint8: the planted photos saved beside the model, in the order of `truth["prompts"]`."""
    from PIL import Image

    paths = [Path(model_dir) / PHOTOS_DIR / f"{i}.png" for i in range(truth["k"])]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{model_dir}: planted photo(s) missing: {missing[:3]}")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def oracle_masks(ground_truth: dict, unet) -> dict:
    """{ff.net.2 layer: LayerMask("columns", bool (in,))}: the planted columns, whose zeroing is the oracle edit."""
    from memprune.formats.edits import LayerMask, linear_layers

    layers = linear_layers(getattr(unet, "unet", unet))
    masks = {}
    for name, idx in ground_truth["layers"].items():
        if name not in layers:
            raise InputError(f"planted ground truth: {name!r} is not a Linear layer of the UNet")
        width = layers[name].in_features
        mask = np.zeros(width, dtype=bool)
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and idx.max() >= width:
            raise InputError(f"planted ground truth: {name}: unit {int(idx.max())} outside its {width} inputs")
        mask[idx] = True
        masks[name] = LayerMask("columns", mask)
    return masks
