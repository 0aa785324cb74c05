"""The `eval-sample`, `eval-score`, `eval-aggregate`, `leaderboard-timing`, `leaderboard` and `leaderboard-stack`
subcommands: their options and handlers. An optional
option defaults to None; the workflow's rules omit it when unset."""

from __future__ import annotations


def _seeds(text: str) -> list[int]:
    return [int(s) for s in str(text).split(",") if s.strip()]


def _metric_options(args):
    from memprune.evaluate.score import MetricOptions

    return MetricOptions(sscd=args.sscd, clip_name=args.clip_name, clip_weights=args.clip_weights,
                         inception=args.inception, device=args.device)


def _sampling_config(args):
    from memprune.sampling import SamplingConfig

    return SamplingConfig(steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, height=args.height,
                          width=args.width, compile=args.compile)


def cmd_eval_sample(args) -> None:
    from memprune.evaluate.sample import sample_variant

    cfg = _sampling_config(args)
    sample_variant(args.variant, args.model, args.out, args.memorized, _seeds(args.seeds), cfg,
                   checkpoint=args.checkpoint, params=args.variant_params, max_memorized=args.max_memorized,
                   nonmemorized=args.nonmemorized, max_nonmemorized=args.max_nonmemorized, device=args.device,
                   dtype=args.dtype, scheduler=args.scheduler)


def cmd_eval_score(args) -> None:
    from memprune.evaluate.score import score_variant

    score_variant(args.samples, args.out, _metric_options(args), memorized=args.memorized, data=args.data,
                  ground_truth=args.ground_truth)


def cmd_eval_aggregate(args) -> None:
    from memprune.evaluate.aggregate import aggregate

    aggregate(args.models_json, args.out, args.summary, args.fig_scatter, args.fig_bars, args.fig_grid,
              copy_threshold=args.copy_threshold, fid_reference=args.fid_reference, metrics=_metric_options(args),
              reference_images=args.reference_images, memorized=args.memorized, nonmemorized=args.nonmemorized,
              data=args.data, ground_truth=args.ground_truth, mask_cost_note=args.mask_cost_note,
              report_thresholds=([float(t) for t in args.report_thresholds.split(",")] if args.report_thresholds
                                 else None))


def cmd_leaderboard_timing(args) -> None:
    from memprune.evaluate.leaderboard import read_models
    from memprune.evaluate.timing import time_models
    from memprune.formats.prompts import read_prompts
    from memprune.formats.store import write_netcdf

    prompts = read_prompts(args.prompts_file)[: args.prompts]
    ds = time_models(args.model, read_models(args.models_json), prompts, _sampling_config(args), args.rounds,
                     args.device, args.dtype, args.scheduler)
    write_netcdf(ds, args.out)
    print(ds[["seconds_per_image", "time_per_image_vs_none"]].to_dataframe()
          .to_string(float_format=lambda x: f"{x:.4f}"))


def cmd_leaderboard(args) -> None:
    import pandas as pd

    from memprune.errors import InputError
    from memprune.evaluate.leaderboard import leaderboard, leaderboard_figure, read_models, write_table

    models = read_models(args.models_json)
    attack = {}
    for item in args.attack or []:
        model_id, sep, path = item.rpartition("=")
        if not sep or model_id not in models:
            raise InputError(f"leaderboard --attack {item!r}: expected MODEL_ID=FILE with a model of --models-json")
        attack[model_id] = path
    table = leaderboard(models, args.eval, attack, args.recovery, args.localization, args.eval_kind, args.timing)
    write_table(table, args.out)
    leaderboard_figure(table, args.figure)
    with pd.option_context("display.width", 250, "display.max_columns", 60):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def cmd_leaderboard_stack(args) -> None:
    from memprune.evaluate.leaderboard import stack

    print(stack(args.inputs, args.out).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _metric_args(p) -> None:
    p.add_argument("--data", help="testbed dataset directory (ground truth, scenes)")
    p.add_argument("--ground-truth", help="directory <root>/<index>/*.png")
    p.add_argument("--sscd", help="sscd_disc_large.torchscript.pt (default: SSIM)")
    p.add_argument("--clip-name", help="open_clip model name (ViT-H-14, ...)")
    p.add_argument("--clip-weights", help="weights file, or a local-dir folder")
    p.add_argument("--inception", help="Inception v3 safetensors (default: CLIP features)")
    p.add_argument("--device", default="auto")


def _sampling_arguments(p) -> None:
    from memprune.cliargs import add_size_args

    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scheduler", help="diffusers scheduler class name (default: the model's)")
    p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                   help="torch.compile the UNet (channels_last); auto: on CUDA only")
    add_size_args(p)


def add_eval_arguments(sub) -> None:
    """Register `eval-sample`, `eval-score` and `eval-aggregate` on the subparsers `sub`."""
    from memprune.formats.prompts import json_object as _json_arg

    p = sub.add_parser("eval-sample", help="evaluation: generate the test prompts x seeds with one model variant")
    p.add_argument("--variant", required=True, help="a registry name (memprune.variants: none, pruned, wen, ...)")
    p.add_argument("--model", required=True, help="the base diffusers pipeline")
    p.add_argument("--checkpoint", help="edit checkpoint directory (a variant that needs one: pruned)")
    p.add_argument("--variant-params", type=_json_arg, default=None,
                   help='JSON object passed to the variant over its defaults, e.g. wen: {"lr": 0.05, "max_iters": 10, '
                        '"target_loss": 0.9}')
    _sampling_arguments(p)
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    p.add_argument("--memorized", required=True, help="memorized prompt file")
    p.add_argument("--max-memorized", type=int, help="the first N memorized prompts only")
    p.add_argument("--nonmemorized", help="non-memorized prompt file")
    p.add_argument("--max-nonmemorized", type=int)
    p.add_argument("--out", required=True, help="samples directory (PNGs, index.csv, timing.json)")
    p.set_defaults(func=cmd_eval_sample)

    p = sub.add_parser("eval-score", help="evaluation: copy similarity, CLIP score, features of one model's samples")
    p.add_argument("--samples", required=True)
    p.add_argument("--memorized", help="memorized prompt file (index of the ground-truth layout)")
    _metric_args(p)
    p.add_argument("--out", required=True, help="scores .nc")
    p.set_defaults(func=cmd_eval_score)

    p = sub.add_parser("eval-aggregate", help="evaluation: fair split, copy rates, FID, time; eval.nc, table, figures")
    p.add_argument("--models-json", required=True,
                   help='ordered JSON object (or a file holding it), one entry per evaluated model: {"none": '
                        '{"variant": "none", "scores": F}, "pruned:wanda|mem_k10/0": {"variant": "pruned", "method": '
                        '"wanda", "subset": "mem_k10/0", "scores": F, "prompts_file": F, "indices": [...], '
                        '"mask_costs": [[tsv, share], ...]}, "wen": {"variant": "wen", "scores": F}}')
    p.add_argument("--copy-threshold", type=float, default=0.4)
    p.add_argument("--fid-reference", choices=["renders", "images", "unedited"], default="renders")
    p.add_argument("--reference-images", help="fid-reference images: <root>/<index>/*.png")
    p.add_argument("--memorized", help="memorized prompt file (index of the ground-truth layout, for the grid)")
    p.add_argument("--nonmemorized", help="non-memorized prompt file (index of --reference-images)")
    p.add_argument("--mask-cost-note", help="what the mask cost of a pruned model counts (eval.nc attrs)")
    p.add_argument("--report-thresholds", help="comma-separated copy similarities: also report the fraction of "
                                               "memorized test images at or above each (eval.nc fraction_over), e.g. "
                                               "0.5,0.7")
    _metric_args(p)
    p.add_argument("--out", required=True, help="eval.nc")
    p.add_argument("--summary", required=True, help="eval_summary.csv")
    p.add_argument("--fig-scatter", required=True)
    p.add_argument("--fig-bars", required=True)
    p.add_argument("--fig-grid", required=True)
    p.set_defaults(func=cmd_eval_aggregate)

    p = sub.add_parser("leaderboard-timing", help="generation time of every compared model in one process, rounds "
                                                  "interleaved: the leaderboard's cost per image")
    p.add_argument("--model", required=True, help="the base diffusers pipeline")
    p.add_argument("--models-json", required=True,
                   help='JSON object (or a file holding it) {model id: {"variant": V, "checkpoint": DIR or null, '
                        '"params": {...}}}, the unedited model "none" among them')
    _sampling_arguments(p)
    p.add_argument("--prompts-file", required=True, help="the prompts generated (the first --prompts), seeds 0..n-1")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", required=True, help="timing.nc")
    p.set_defaults(func=cmd_leaderboard_timing)

    p = sub.add_parser("leaderboard", help="one row per compared model: copies per kind, MR after recovery, prompt "
                                           "following and Frechet vs the unedited model, localization, cost")
    p.add_argument("--models-json", required=True,
                   help='JSON object (or a file holding it) {model id: {"variant": V, "method": M or null, "subset": '
                        '"collection/i" or null, "prompts_file": F, "indices": [...] (the edit\'s subset), '
                        '"edit_prompts": N, "edit_benchmark": tsv}}')
    p.add_argument("--eval", help="eval.nc")
    p.add_argument("--eval-kind", help="the evaluated memorized prompt set's name (a label)")
    p.add_argument("--attack", nargs="*", metavar="MODEL_ID=FILE", help="the attack's per-model files")
    p.add_argument("--recovery", help="recovery.nc")
    p.add_argument("--localization", help="localization.nc (a planted testbed)")
    p.add_argument("--timing", help="timing.nc (memprune leaderboard-timing): the time columns")
    p.add_argument("--out", required=True, help="leaderboard.csv")
    p.add_argument("--figure", required=True, help="the figure (png)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("leaderboard-stack",
                       help="results/leaderboard.csv: the models' leaderboards one under the other")
    p.add_argument("--inputs", nargs="+", required=True, help="results/<model>/leaderboard.csv files")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_leaderboard_stack)
