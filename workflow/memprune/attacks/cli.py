"""The attack and detection subcommands: `attack-generate`, `attack-analyze`, `attack-table`, `detect-scores`,
`detection-report`, `detect-top-k` (argument definitions next to the handlers that read them)."""

from __future__ import annotations

import json
from pathlib import Path

from memprune.cliargs import add_model_args, sampling_config
from memprune.evaluate.copies import add_copy_metric_arguments
from memprune.errors import InputError
from memprune.formats.prompts import json_object as _json_arg


def _prompt_slice(path: str, start: int, stop: int | None) -> list[str]:
    from memprune.formats.prompts import read_prompts

    prompts = read_prompts(Path(path))[start:stop]
    if not prompts:
        raise InputError(f"{path}: no prompts in lines [{start}, {stop})")
    return prompts


def _seed_range(seed: int, n: int) -> list[int]:
    if n < 1:
        raise InputError(f"need at least one seed, got {n}")
    return list(range(seed, seed + n))


def cmd_attack_generate(args) -> None:
    from memprune.attacks.extraction import attack_chunk

    prompts = _prompt_slice(args.prompts_file, args.start, args.stop)
    attack_chunk(args.model, prompts, args.group, _seed_range(args.seed, args.n_samples), sampling_config(args),
                 Path(args.out), grid=args.tile_grid, data_dir=Path(args.data) if args.data else None,
                 variant=args.variant, checkpoint=args.checkpoint, params=args.variant_params, device=args.device,
                 dtype=args.dtype, scheduler=args.scheduler, sscd=args.sscd)


def cmd_attack_analyze(args) -> None:
    from memprune.attacks.extraction import analyze_variant
    from memprune.evaluate.copies import copy_metric_from_args

    analyze_variant([Path(c) for c in args.chunks], args.variant, args.threshold, args.min_clique,
                    copy_metric_from_args(args), Path(args.out), data_dir=Path(args.data) if args.data else None)


def cmd_attack_table(args) -> None:
    from memprune.attacks.extraction import attack_figure, attack_table, format_table
    from memprune.formats.store import atomic_file

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
    from memprune.attacks.detection import score_prompt_set

    prompts = _prompt_slice(args.prompts_file, 0, None)
    score_prompt_set(args.model, prompts, _seed_range(args.seed, args.n_seeds), args.steps, args.score_steps,
                     args.guidance, args.batch_size, Path(args.out), args.name, args.device, args.dtype,
                     args.scheduler, args.height, args.width)


def cmd_detection_report(args) -> None:
    from memprune.attacks.detection import detection_report

    detection_report([Path(s) for s in args.scores], args.positive.split(","), Path(args.out), Path(args.csv))


def cmd_detect_top_k(args) -> None:
    from memprune.attacks.detection import top_k_prompts
    from memprune.formats.store import atomic_write_text

    prompts = top_k_prompts([Path(s) for s in args.scores], args.top_k)
    atomic_write_text(Path(args.out), "".join(p + "\n" for p in prompts))


def add_attack_arguments(sub) -> None:
    p = sub.add_parser("attack-generate", help="extraction attack, steps 1-2: N images per prompt, tiled distances")
    add_model_args(p)
    p.add_argument("--variant", required=True,
                   help="model variant, a registry name (memprune.variants: none, pruned, wen)")
    p.add_argument("--checkpoint", default=None,
                   help="edit checkpoint directory, for a variant that needs one (pruned)")
    p.add_argument("--variant-params", type=_json_arg, default=None,
                   help="JSON object of the variant's generation parameters, over its defaults (e.g. wen: max_iters)")
    p.add_argument("--prompts-file", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--group", required=True, help="group label of these prompts (the prompt set's name)")
    p.add_argument("--n-samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    p.add_argument("--tile-grid", type=int, default=4)
    p.add_argument("--data", default=None, help="testbed dataset directory: ground-truth training images")
    p.add_argument("--sscd", default=None, help="SSCD TorchScript checkpoint that scores copies (default: SSIM)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attack_generate)

    p = sub.add_parser("attack-analyze", help="extraction attack, steps 3-4: cliques, identified, actually memorized")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--variant", required=True,
                   help="the variant's id in the file and table, free-form (none, pruned:wanda|mem_k10/0, wen)")
    p.add_argument("--threshold", type=float, required=True,
                   help="tiled-L2 distance below which two images are similar")
    p.add_argument("--min-clique", type=int, default=3)
    add_copy_metric_arguments(p, 0.4)
    p.add_argument("--data", default=None,
                   help="testbed dataset directory: every train-split image, the cliques' candidates for which image "
                        "they copy")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_attack_analyze)

    p = sub.add_parser("attack-table", help="the paper's Table 1: identified / actually memorized per variant and "
                                            "group")
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--out", required=True, help="table.csv")
    p.add_argument("--figure", default=None, help="PNG of generations per variant")
    p.add_argument("--chunks-json", default="{}", help="{variant: [chunk files]} for the figure")
    p.add_argument("--data", default=None)
    p.set_defaults(func=cmd_attack_table)

    p = sub.add_parser("detect-scores", help="Wen et al.'s detection score of every prompt of a file")
    add_model_args(p)
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
