"""`memprune <step>`: one subcommand per workflow step; each is what one Snakemake rule runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


from memprune.errors import InputError
from memprune.cliargs import add_model_args as _add_model_args
from memprune.cliargs import sampling_config as _sampling_config
from memprune.formats.prompts import json_object as _json_arg


def _setup_logging(log_file: str | None) -> None:
    """Log to stderr (a rule's `2> {log}` holds it); `--log FILE` (by hand) writes the file instead, so every line
    lands once in one place."""
    handlers = [] if log_file else [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def cmd_make_dataset(args) -> None:
    from memprune.testbed.dataset import DatasetSpec, generate_dataset

    generate_dataset(DatasetSpec(**_json_arg(args.spec)), Path(args.out))


def cmd_train_testbed(args) -> None:
    from memprune.testbed.model import ModelSpec
    from memprune.testbed.train import TrainSpec, train_testbed

    spec = _json_arg(args.spec)
    model = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.pop("model", {}).items()})
    train_testbed(Path(args.manifest), Path(args.out), TrainSpec(model=model, **spec), Path(args.bpe),
                  progress=not args.no_progress)


def _version() -> str:
    from memprune import __version__

    return __version__


def cmd_capture(args) -> None:
    from memprune.capture.hooks import capture, capture_to_dataset
    from memprune.models import load_pipeline
    from memprune.formats.prompts import read_prompts
    from memprune.formats.store import write_zarr

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
    write_zarr(capture_to_dataset(cap, attrs, args.variant), args.out)


def cmd_gather(args) -> None:
    from memprune.capture.gather import gather_collection

    gather_collection(args.chunks, args.prompts_file, _json_arg(args.subsets_json), args.out)


def cmd_locate(args) -> None:
    from memprune.localize.run import locate_collection

    locate_collection(args.method, _json_arg(args.params), args.model, args.collection, args.n_subsets, args.out,
                      subsets_dir=args.subsets, null=args.null, reference_dir=args.reference, variant=args.variant,
                      neurons=args.neurons, subsets=_json_arg(args.subsets_json) if args.subsets_json else None,
                      layers=args.layers)


def cmd_layers(args) -> None:
    from memprune.formats.layers import write_layers

    print(json.dumps(write_layers(args.model, args.out)))


def cmd_analyze(args) -> None:
    from memprune.analysis.density_iou import analyze

    analyze(json.loads(args.methods_json), args.seed, args.density, args.iou, args.fig_density, args.fig_iou,
            jobs=args.jobs)


def cmd_localization(args) -> None:
    from memprune.formats.edits import load_unet
    from memprune.localize.known_answer import localization_dataset
    from memprune.models import ffn_layers
    from memprune.formats.store import write_netcdf
    from memprune.testbed.planted import read_planted_units

    truth = read_planted_units(Path(args.model))
    in_features = {n: layer.in_features for n, layer in ffn_layers(load_unet(args.model))}
    ds = localization_dataset(json.loads(args.stores_json), truth, in_features)
    write_netcdf(ds, Path(args.out))
    for loc in ds.localizer.values:
        sel = ds.sel(localizer=loc)
        print(f"{loc}: precision {float(sel.precision.mean()):.3f} recall {float(sel.recall.mean()):.3f} "
              f"(random precision {float(ds.random_precision):.3f})")


def cmd_sample(args) -> None:
    from memprune.models import load_pipeline
    from memprune.formats.prompts import read_prompts
    from memprune.sampling import generate, write_samples

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
    from memprune.testbed.report import testbed_report

    testbed_report(Path(args.model), Path(args.data), Path(args.out), Path(args.grid),
                   seeds=[int(s) for s in args.seeds.split(",")],
                   guidances=[float(g) for g in args.guidance.split(",")],
                   threshold=args.threshold, steps=args.steps, batch_size=args.batch_size,
                   max_single=args.max_single)


def cmd_finetune_decoder(args) -> None:
    from memprune.testbed.train import finetune_decoder_of

    finetune_decoder_of(Path(args.model), Path(args.manifest), Path(args.out), args.steps, args.lr, args.seed,
                        progress=not args.no_progress)


def cmd_prune(args) -> None:
    from memprune.mitigate.prune import prune

    prune(args.model, args.masks, args.out)


def cmd_export(args) -> None:
    from memprune.formats.edits import export_pipeline

    export_pipeline(args.checkpoint, args.out, base=args.base, dtype=args.dtype)


def cmd_train_clip(args) -> None:
    from memprune.testbed.clip import ClipSpec, train_clip

    record = train_clip(Path(args.data), Path(args.out), ClipSpec(**_json_arg(args.spec)),
                        progress=not args.no_progress)
    print(json.dumps(record["retrieval"]))


def cmd_fetch_training_images(args) -> None:
    from memprune.evaluate.fetch_images import fetch_training_images

    counts = fetch_training_images(Path(args.prompts), Path(args.root), args.timeout, args.workers)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
          + f" (report: {Path(args.root) / 'fetch_report.csv'})")


def cmd_check(args) -> None:
    from memprune.plan.config import Plan
    from memprune.plan.preflight import MISSING, REPO, Preflight, format_report, read_configs, scope_of

    config, files = read_configs(args.configfile)
    preflight = Preflight(Plan(config, REPO))
    entries = preflight.check(args.targets or None)
    print(format_report(entries, scope_of(preflight, args.targets, files)))
    missing = sum(e.status == MISSING for e in entries)
    if missing:
        raise InputError(f"{missing} external input(s) missing (listed above, each with its fix)")


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

    p = sub.add_parser("gather", help="build one activation store per subset of a collection from chunk stores")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--prompts-file", required=True, help="the collection's prompt set")
    p.add_argument("--subsets-json", required=True, help='{"<i>": [prompt indices], ...}')
    p.add_argument("--out", required=True, help="directory: <i>.zarr per subset")
    p.set_defaults(func=cmd_gather)

    p = sub.add_parser("locate", help="run a localizer on every subset of a collection: one mask store per subset")
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, help="a localizer (workflow/memprune/localize/<name>.py)")
    p.add_argument("--params", default="{}", help="JSON of the localizer's parameters")
    p.add_argument("--collection", required=True, help="its name (seeds the random control)")
    p.add_argument("--n-subsets", type=int, required=True)
    p.add_argument("--subsets", default=None, help="directory of the subsets' activation stores (from gather)")
    p.add_argument("--null", default=None, help="the null prompt's activation store")
    p.add_argument("--reference", default=None, help="directory of the imitated method's mask stores (random)")
    p.add_argument("--neurons", default=None,
                   help="a per-prompt localizer's search of the prompt set (`memprune nemo`)")
    p.add_argument("--subsets-json", default=None, help='per-prompt localizers: {"<i>": [prompt indices], ...}')
    p.add_argument("--variant", choices=["paper", "reference"], default="paper", help="the activations' variant")
    p.add_argument("--layers", default=None, help="the model's observed weights (`memprune layers`); "
                                                  "without it the UNet is loaded")
    p.add_argument("--out", required=True, help="directory: <i>.zarr per subset")
    p.set_defaults(func=cmd_locate)

    p = sub.add_parser("layers", help="the weights every localizer observes, and the UNet's hash, in one file that "
                                      "mask jobs read instead of loading the UNet")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="a .safetensors file")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("analyze", help="density and pairwise IOU of masks across subsets, per method")
    p.add_argument("--methods-json", required=True, help='{method: {collection: {"control": bool, "masks": [...]}}}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", required=True)
    p.add_argument("--iou", required=True)
    p.add_argument("--fig-density", required=True)
    p.add_argument("--jobs", type=int, default=1, help="layers analysed in parallel (threads)")
    p.add_argument("--fig-iou", required=True)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("localization", help="a planted testbed: precision and recall of every localizer's masks "
                                            "against the planted units (planted.json)")
    p.add_argument("--model", required=True, help="the planted testbed (with planted.json)")
    p.add_argument("--stores-json", required=True, help='{localizer: {collection: [mask store, ...]}}')
    p.add_argument("--out", required=True, help="localization.nc")
    p.set_defaults(func=cmd_localization)

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

    p = sub.add_parser("prune", help="edit checkpoint: zero a subset's mask (any localizer's) in the named layers")
    p.add_argument("--model", required=True, help="base diffusers pipeline directory or hub id")
    p.add_argument("--masks", required=True, help="a subset's mask store (.zarr) from `memprune locate`")
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

    from memprune.evaluate.cli import add_eval_arguments

    add_eval_arguments(sub)
    from memprune.testbed.cli import add_testbed_plant_arguments
    add_testbed_plant_arguments(sub)
    from memprune.localize.nemo_search import add_nemo_arguments
    add_nemo_arguments(sub)
    from memprune.attacks.cli import add_attack_arguments

    add_attack_arguments(sub)
    from memprune.attacks.recovery_cli import add_recovery_arguments

    add_recovery_arguments(sub)
    from memprune.mitigate.adversarial import add_adversarial_arguments

    add_adversarial_arguments(sub)
    from memprune.random_model import add_random_model_arguments

    add_random_model_arguments(sub)
    from memprune.profiles import add_profiles_arguments

    add_profiles_arguments(sub)
    from memprune.report_md.cli import add_report_arguments

    add_report_arguments(sub)
    p = sub.add_parser("fetch-training-images",
                       help="download the training images of memorized prompts to <root>/<index>/0.png; report dead "
                            "links")
    p.add_argument("--prompts", required=True, help=".jsonl prompt file with `url` per row, or .csv with a URL column")
    p.add_argument("--root", required=True, help="ground-truth directory (config key evaluate.ground_truth)")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_fetch_training_images)
    p = sub.add_parser("check", help="preflight: the external inputs (weights, SSCD, CLIP, training images) the "
                       "targets need, each OK or MISSING with its fix; exit status 2 when one is missing")
    p.add_argument("targets", nargs="*", help="paths as snakemake takes them (results/iou.nc, results/<model>/eval.nc, "
                   "...); none: everything the config builds. Targets go before --configfile")
    p.add_argument("--configfile", nargs="+", default=[], help="config files overlaid in order on the schema's "
                   "defaults, as snakemake takes them (default: config.yaml)")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    try:
        args.func(args)
    except InputError as e:
        logging.getLogger("memprune").error("memprune %s: error: %s", args.command, e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
