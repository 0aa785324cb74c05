"""`memprune <step>`: one subcommand per workflow step; each is what one Snakemake rule runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .prompts import InputError


def _setup_logging(log_file: str | None) -> None:
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"bad JSON argument {text[:80]!r}: {e.msg}") from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {text[:80]!r}")
    return value


def cmd_make_dataset(args) -> None:
    from .testbed import DatasetSpec, generate_dataset

    generate_dataset(DatasetSpec(**_json_arg(args.spec)), Path(args.out))


def cmd_train_testbed(args) -> None:
    from .testbed import ModelSpec, TrainSpec, train_testbed

    spec = _json_arg(args.spec)
    model = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.pop("model", {}).items()})
    train_testbed(Path(args.manifest), Path(args.out), TrainSpec(model=model, **spec), Path(args.bpe), progress=not args.no_progress)


def _version() -> str:
    from . import __version__

    return __version__


def _sampling_config(args):
    from .sampling import SamplingConfig

    return SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                          height=getattr(args, "height", None), width=getattr(args, "width", None))


def _add_model_args(p, sampling: bool = True) -> None:
    p.add_argument("--model", required=True, help="diffusers pipeline directory or hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scheduler", default=None, help="diffusers scheduler class name (default: the model's)")
    if sampling:
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--guidance", type=float, default=7.5)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)


def cmd_capture(args) -> None:
    from .activations import capture, capture_to_dataset
    from .models import load_pipeline
    from .prompts import read_prompts
    from .store import write_zarr

    if args.null:
        prompts = [""]
    else:
        if not args.prompts_file:
            raise InputError("capture: give --prompts-file (with --start/--stop) or --null")
        prompts = read_prompts(Path(args.prompts_file))[args.start : args.stop]
        if not prompts:
            raise InputError(f"{args.prompts_file}: no prompts in lines [{args.start}, {args.stop})")
    pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    cap = capture(pipe, prompts, args.seed, _sampling_config(args), normalize_tokens=args.variant == "reference")
    attrs = {
        "model": str(args.model), "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
        "variant": args.variant, "scheduler": type(pipe.scheduler).__name__, "memprune_version": _version(),
        "null_prompt": int(args.null),
    }
    write_zarr(capture_to_dataset(cap, attrs), args.out)


def cmd_gather(args) -> None:
    from .store import open_zarr, write_zarr
    import xarray as xr

    prompts = json.loads(args.prompts_json)
    stores = [open_zarr(c) for c in args.chunks]
    merged = xr.concat(stores, dim="prompt") if len(stores) > 1 else stores[0]
    have = set(merged.prompt.values.tolist())
    missing = [p for p in prompts if p not in have]
    if missing:
        raise InputError(f"activation chunks {args.chunks} lack {len(missing)} prompt(s), e.g. {missing[0][:60]!r}")
    subset = merged.sel(prompt=prompts)
    subset = subset.assign_coords(prompt=np.array(prompts, dtype=object))
    subset.attrs = {**stores[0].attrs, "subset_prompts": len(prompts)}
    write_zarr(subset, args.out)


def cmd_masks(args) -> None:
    from .masks import compute_subset_masks

    compute_subset_masks(args.model, args.activations, args.null, args.sparsity, args.tau, args.variant, args.out)


def cmd_analyze(args) -> None:
    from .analysis import analyze

    analyze(json.loads(args.collections_json), args.seed, args.density, args.iou, args.fig_density, args.fig_iou,
            jobs=args.jobs)


def cmd_sample(args) -> None:
    from .models import load_pipeline
    from .prompts import read_prompts
    from .sampling import generate, write_samples

    prompts = read_prompts(Path(args.prompts)) if args.prompts else []
    prompts += args.prompt or []
    if not prompts:
        raise InputError("sample: give --prompts FILE and/or --prompt TEXT")
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = load_pipeline(args.model, args.device, args.dtype, args.scheduler)
    flat_prompts = [p for p in prompts for _ in seeds]
    flat_seeds = [s for _ in prompts for s in seeds]
    images = generate(pipe, flat_prompts, flat_seeds, _sampling_config(args), progress=True)
    write_samples(Path(args.out), flat_prompts, flat_seeds, images)


def cmd_testbed_report(args) -> None:
    from .report import testbed_report

    testbed_report(Path(args.model), Path(args.data), Path(args.out), Path(args.grid),
                   seeds=[int(s) for s in args.seeds.split(",")],
                   guidances=[float(g) for g in args.guidance.split(",")],
                   threshold=args.threshold, steps=args.steps, batch_size=args.batch_size,
                   max_single=args.max_single)


def cmd_finetune_decoder(args) -> None:
    from .testbed import finetune_decoder_of

    finetune_decoder_of(Path(args.model), Path(args.manifest), Path(args.out), args.steps, args.lr, args.seed,
                        progress=not args.no_progress)


def cmd_prune(args) -> None:
    from .prune import prune_checkpoint

    prune_checkpoint(args.model, args.masks, args.out)


def cmd_export(args) -> None:
    from .prune import export_pipeline

    export_pipeline(args.checkpoint, args.out, base=args.base, dtype=args.dtype)


def cmd_train_clip(args) -> None:
    from .clip_testbed import ClipSpec, train_clip

    record = train_clip(Path(args.data), Path(args.out), ClipSpec(**_json_arg(args.spec)), progress=not args.no_progress)
    print(json.dumps(record["retrieval"]))


def cmd_eval_sample(args) -> None:
    from .evaluate import sample_variant

    sample_variant(args)


def cmd_eval_score(args) -> None:
    from .evaluate import score_variant

    score_variant(args)


def cmd_eval_aggregate(args) -> None:
    from .evaluate import aggregate

    aggregate(args)


def _prompt_slice(path: str, start: int, stop: int | None) -> list[str]:
    from .prompts import read_prompts

    prompts = read_prompts(Path(path))[start:stop]
    if not prompts:
        raise InputError(f"{path}: no prompts in lines [{start}, {stop})")
    return prompts


def _seed_range(seed: int, n: int) -> list[int]:
    if n < 1:
        raise InputError(f"need at least one seed, got {n}")
    return list(range(seed, seed + n))


def cmd_attack_generate(args) -> None:
    from .attack import attack_chunk

    prompts = _prompt_slice(args.prompts_file, args.start, args.stop)
    attack_chunk(args.model, prompts, args.group, _seed_range(args.seed, args.n_samples), _sampling_config(args),
                 Path(args.out), grid=args.tile_grid, data_dir=Path(args.data) if args.data else None,
                 pruned=args.pruned, device=args.device, dtype=args.dtype, scheduler=args.scheduler)


def cmd_attack_analyze(args) -> None:
    from .attack import analyze_variant

    analyze_variant([Path(c) for c in args.chunks], args.variant, args.threshold, args.min_clique,
                    args.copy_threshold, Path(args.out))


def cmd_attack_table(args) -> None:
    from .attack import attack_figure, attack_table, format_table
    from .store import atomic_file

    variants = [Path(v) for v in args.variants]
    table = attack_table(variants)
    with atomic_file(Path(args.out)) as tmp:
        table.to_csv(tmp, index=False)
    print(format_table(table))
    if args.figure:
        chunks = json.loads(args.chunks_json)
        attack_figure(variants, {k: [Path(c) for c in v] for k, v in chunks.items()},
                      Path(args.data) if args.data else None, Path(args.figure))


def cmd_detect_scores(args) -> None:
    from .attack import score_prompt_set

    prompts = _prompt_slice(args.prompts_file, 0, None)
    score_prompt_set(args.model, prompts, _seed_range(args.seed, args.n_seeds), args.steps, args.score_steps,
                     args.guidance, args.batch_size, Path(args.out), args.name, args.device, args.dtype,
                     args.scheduler)


def cmd_detection_report(args) -> None:
    from .attack import detection_report

    detection_report([Path(s) for s in args.scores], args.positive.split(","), Path(args.out), Path(args.csv))


def cmd_detect_top_k(args) -> None:
    from .attack import top_k_prompts
    from .store import atomic_write_text

    prompts = top_k_prompts([Path(s) for s in args.scores], args.top_k)
    atomic_write_text(Path(args.out), "".join(p + "\n" for p in prompts))


def cmd_fetch_groundtruth(args) -> None:
    from .groundtruth import fetch_groundtruth

    counts = fetch_groundtruth(Path(args.prompts), Path(args.root), args.timeout, args.workers)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" (report: {Path(args.root) / 'fetch_report.csv'})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memprune", description=__doc__)
    parser.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="generate the synthetic testbed dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--spec", default="{}", help="JSON of DatasetSpec fields")
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("train-testbed", help="train the testbed pipeline on a dataset manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bpe", required=True, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    p.add_argument("--spec", default="{}", help="JSON of TrainSpec fields")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_testbed)

    p = sub.add_parser("finetune-decoder", help="fine-tune a testbed's VAE decoder on frozen latents")
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune_decoder)

    p = sub.add_parser("capture", help="record ff.net.2 input statistics while sampling prompts")
    _add_model_args(p)
    p.add_argument("--prompts-file")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--null", action="store_true", help="capture the null prompt \"\" instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=["paper", "reference"], default="paper")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("gather", help="build a subset's activation store from chunk stores")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--prompts-json", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_gather)

    p = sub.add_parser("masks", help="memorized-neuron masks of one subset (equations 4-7)")
    p.add_argument("--model", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--null", required=True)
    p.add_argument("--sparsity", type=float, default=0.01)
    p.add_argument("--tau", type=int, default=10)
    p.add_argument("--variant", choices=["paper", "reference"], default="paper")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("analyze", help="density and pairwise IOU of masks across subsets")
    p.add_argument("--collections-json", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", required=True)
    p.add_argument("--iou", required=True)
    p.add_argument("--fig-density", required=True)
    p.add_argument("--jobs", type=int, default=1, help="layers analysed in parallel (threads)")
    p.add_argument("--fig-iou", required=True)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("sample", help="generate PNGs for prompts x seeds, with an index.csv")
    _add_model_args(p)
    p.add_argument("--prompts", help="prompt file (.txt, .jsonl, .csv)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("testbed-report", help="measure what the testbed model memorizes and how well it generalizes")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the testbed dataset directory (manifest.jsonl)")
    p.add_argument("--out", required=True, help="report.nc")
    p.add_argument("--grid", required=True, help="PNG grid of prompts x seeds beside their training images")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--guidance", default="1,2,4,7.5")
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-single", type=int, default=None, help="report on the first N single-seen prompts only")
    p.set_defaults(func=cmd_testbed_report)

    p = sub.add_parser("prune", help="pruned checkpoint: zero a subset's union mask in every ff.net.2 weight")
    p.add_argument("--model", required=True, help="base diffusers pipeline directory or hub id")
    p.add_argument("--masks", required=True, help="a subset's mask store (.zarr) from `memprune masks`")
    p.add_argument("--out", required=True, help="checkpoint directory (weights.safetensors + manifest.json)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write a pruned checkpoint as a full diffusers pipeline directory")
    p.add_argument("--checkpoint", required=True, help="a directory from `memprune prune`")
    p.add_argument("--base", default=None, help="base model (default: the one in the checkpoint's manifest)")
    p.add_argument("--dtype", default="float32", help="dtype of the saved weights")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train-clip", help="train the testbed's tiny open_clip model (CLIP score, Frechet features)")
    p.add_argument("--data", required=True, help="the testbed dataset directory (manifest.jsonl)")
    p.add_argument("--out", required=True, help="model folder (open_clip local-dir: config + safetensors + record)")
    p.add_argument("--spec", default="{}", help="JSON of ClipSpec fields")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_clip)

    from .evaluate import add_eval_arguments

    add_eval_arguments(sub, cmd_eval_sample, cmd_eval_score, cmd_eval_aggregate)
    p = sub.add_parser("attack-generate", help="extraction attack, steps 1-2: N images per prompt, tiled distances")
    _add_model_args(p)
    p.add_argument("--pruned", default=None, help="pruned checkpoint directory (default: the unedited model)")
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--group", required=True, help="group label of these prompts (the prompt set's name)")
    p.add_argument("--n-samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    p.add_argument("--tile-grid", type=int, default=4)
    p.add_argument("--data", default=None, help="testbed dataset directory: ground-truth training images")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attack_generate)

    p = sub.add_parser("attack-analyze", help="extraction attack, steps 3-4: cliques, identified, actually memorized")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--threshold", type=float, required=True, help="tiled-L2 distance below which two images are similar")
    p.add_argument("--min-clique", type=int, default=3)
    p.add_argument("--copy-threshold", type=float, default=0.4)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attack_analyze)

    p = sub.add_parser("attack-table", help="the paper's Table 1: identified / actually memorized per variant and group")
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--out", required=True, help="table.csv")
    p.add_argument("--figure", default=None, help="PNG of generations per variant")
    p.add_argument("--chunks-json", default="{}", help="{variant: [chunk files]} for the figure")
    p.add_argument("--data", default=None)
    p.set_defaults(func=cmd_attack_table)

    p = sub.add_parser("detect-scores", help="Wen et al.'s detection score of every prompt of a file")
    _add_model_args(p)
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--name", required=True, help="the prompt set's name (its group)")
    p.add_argument("--n-seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-steps", type=int, default=1, help="average over the first N denoising steps")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_detect_scores)

    p = sub.add_parser("detection-report", help="ROC AUC and TPR at 1%% FPR of detection scores")
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--positive", required=True, help="comma-separated groups that are memorized")
    p.add_argument("--out", required=True)
    p.add_argument("--csv", required=True)
    p.set_defaults(func=cmd_detection_report)

    p = sub.add_parser("detect-top-k", help="the top-k scored prompts of a pool, as a prompt file (closed loop)")
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--top-k", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_detect_top_k)
    p = sub.add_parser("fetch-groundtruth",
                       help="download the training images of memorized prompts to <root>/<index>/0.png; report dead links")
    p.add_argument("--prompts", required=True, help=".jsonl prompt file with `url` per row")
    p.add_argument("--root", required=True, help="ground-truth directory (config key evaluate.ground_truth)")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_fetch_groundtruth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    try:
        args.func(args)
    except InputError as e:
        logging.getLogger("memprune").error("%s", e)
        print(f"memprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
