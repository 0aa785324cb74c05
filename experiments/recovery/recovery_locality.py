"""Locality evidence from the recovery attack ("Finding Dori", section on locality), on a testbed:

1. For the first `--n` prompts of each `--group` (prompt files), recover an embedding of each training photo with
   the search of `memprune.attacks.recovery` (from the prompt's embedding, unedited model), and compute Wanda
   masks (the paper's rule, sparsity and tau as given) from the original prompts and from the recovered
   embeddings of the same photos: IOU per FFN layer of the two tau-unions (DoRI reports below 0.6 in most layers).
2. From `--starts` random starts per photo: how far apart the successful embeddings are (cosine distance of the
   flattened embeddings) and their FFN activations (cosine distance of the per-layer ff.net.2 input norms,
   averaged over layers), against the same distances between different memorized prompts' embeddings.
One JSON line per measurement.

    python experiments/recovery/recovery_locality.py --model resources/testbed_planted \
        --data results/testbed_planted/data --group planted=resources/prompts/testbed_planted/planted.txt \
        --group memorized=resources/prompts/testbed/duplicated.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from memprune.bench import cpu_pipeline, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the testbed dataset (the photos)")
    ap.add_argument("--group", action="append", required=True, help="name=prompt file")
    ap.add_argument("--n", type=int, default=10, help="prompts per group (the paper's subset size)")
    ap.add_argument("--starts", type=int, default=4, help="random starts per photo (part 2)")
    ap.add_argument("--n-random-photos", type=int, default=4, help="photos per group with random starts")
    ap.add_argument("--sparsity", type=float, default=0.01)
    ap.add_argument("--tau", type=int, default=10)
    ap.add_argument("--capture-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from memprune.capture.hooks import BRANCHES, capture
    from memprune.attacks import recovery
    from memprune.evaluate.training_images import TrainingImages
    from memprune.localize import Inputs, get
    from memprune.evaluate.metrics import ssim_matrix
    from memprune.models import ffn_layers
    from memprune.analysis.overlap import pairwise_iou
    from memprune.formats.prompts import read_prompts
    from memprune.sampling import SamplingConfig

    pipe = cpu_pipeline(args.model, args.threads)
    pipe.unet.requires_grad_(False)
    truth = TrainingImages(data=args.data)
    spec = recovery.RecoverySpec()
    sampling = SamplingConfig(steps=args.capture_steps, guidance=args.guidance, batch_size=16)
    weights = {n: lin.weight.detach().float() for n, lin in ffn_layers(pipe.unet)}
    wanda = get("wanda")
    null = capture(pipe, [""], 0, sampling)
    cond = BRANCHES.index("cond")

    def masks_of(cap):
        inputs = Inputs(weights=weights, n_prompts=len(cap.prompts),
                        memorized={l: cap.sumsq[l][:, :, cond].sum(0).astype(np.float64) for l in cap.layers},
                        null={l: null.sumsq[l][:, :, cond].sum(0).astype(np.float64) for l in cap.layers},
                        steps=np.arange(len(cap.timesteps)), t=cap.timesteps)
        return wanda.locate(inputs, {"sparsity": args.sparsity, "tau": args.tau})

    def features(cap):  # (prompt, layers * features): per layer the input norms over steps, cond branch
        return np.concatenate([np.sqrt(cap.sumsq[l][:, :, cond].sum(1)) for l in cap.layers], axis=1)

    def cosine_distances(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - x @ x.T
        return d[np.triu_indices(len(x), 1)]

    gen = torch.Generator().manual_seed(0)
    reference = recovery.embed(pipe, [p for g in args.group for p in read_prompts(Path(g.split("=", 1)[1]))][:64])
    for group in args.group:
        name, path = group.split("=", 1)
        prompts = read_prompts(Path(path))[: args.n]
        t0 = time.time()
        found = []
        for p in prompts:
            image = truth.first_image(p)
            z0 = recovery.image_latent(pipe, image)
            with torch.enable_grad():
                y, _ = recovery.search(pipe.unet, pipe.scheduler, z0, recovery.embed(pipe, [p]), spec, gen)
            found.append(y)
        embeds = torch.cat(found)
        original = capture(pipe, prompts, 0, sampling)
        recovered = capture(pipe, prompts, 0, sampling, prompt_embeds=embeds)
        m_orig, m_rec = masks_of(original), masks_of(recovered)
        per_layer = {l: float(pairwise_iou([m_orig.union[l], m_rec.union[l]])[0, 1]) for l in m_orig.layers}
        values = np.array(list(per_layer.values()))
        emit(group=name, measure="wanda_iou_original_vs_recovered", n_prompts=len(prompts),
             mean=round(float(values.mean()), 3), **{"layers_below_0.6": int((values < 0.6).sum())},
             layers=len(values), per_layer=[round(v, 3) for v in values], seconds=round(time.time() - t0, 1))

        # part 2: random starts
        t0 = time.time()
        emb_d, act_d, success = [], [], []
        for p in prompts[: args.n_random_photos]:
            image = truth.first_image(p)
            z0 = recovery.image_latent(pipe, image)
            ys = []
            for _ in range(args.starts):
                start = recovery.start_embedding(pipe, "random", p, p, reference, gen)
                with torch.enable_grad():
                    y, _ = recovery.search(pipe.unet, pipe.scheduler, z0, start, spec, gen)
                imgs, _ = get_variant().generate_embeds(pipe, y.expand(len(spec.seeds), -1, -1), list(spec.seeds),
                                                        SamplingConfig(steps=spec.sample_steps, guidance=spec.guidance,
                                                                       batch_size=8), {})
                ok = bool(recovery.copied(ssim_matrix(imgs, image[None])[:, 0], spec.copy_threshold))
                success.append(ok)
                if ok:
                    ys.append(y)
            if len(ys) >= 2:
                ys = torch.cat(ys)
                emb_d += cosine_distances(ys.flatten(1).numpy()).tolist()
                act_d += cosine_distances(features(capture(pipe, [p] * len(ys), 0, sampling,
                                                           prompt_embeds=ys))).tolist()
        between_emb = cosine_distances(recovery.embed(pipe, prompts).flatten(1).numpy())
        between_act = cosine_distances(features(original))
        emit(group=name, measure="random_starts", photos=args.n_random_photos, starts=args.starts,
             success_rate=round(float(np.mean(success)), 3),
             embedding_distance_same_photo=round(float(np.mean(emb_d)), 3) if emb_d else None,
             embedding_distance_between_prompts=round(float(between_emb.mean()), 3),
             activation_distance_same_photo=round(float(np.mean(act_d)), 4) if act_d else None,
             activation_distance_between_prompts=round(float(between_act.mean()), 4),
             seconds=round(time.time() - t0, 1))


def get_variant():
    from memprune.variants import get

    return get("none")


if __name__ == "__main__":
    main()
