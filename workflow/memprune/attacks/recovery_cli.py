"""The recovery attack's subcommands: `recover` (one model, or one chunk of its targets), `recovery-merge` and
`recovery-table` (the argument definitions next to the handlers that read them)."""

from __future__ import annotations

from pathlib import Path

from memprune.attacks.recovery import INITS, RecoverySpec, run_variant
from memprune.errors import InputError


def add_recovery_arguments(sub) -> None:
    """Register `recover` and `recovery-table`."""
    from memprune.cliargs import add_model_args, add_size_args
    from memprune.formats.prompts import json_object, read_prompts

    def run(args):
        groups = {g: read_prompts(Path(f)) for g, f in json_object(args.groups_json).items()}
        spec = RecoverySpec(**json_object(args.spec))
        images = {g: tuple(v) for g, v in json_object(args.images_json).items()} if args.images_json else None
        if bool(args.data) == bool(images):
            raise InputError("recover: give the testbed dataset (--data) or the fetched images (--images-json), "
                             "one of them")
        run_variant(args.model, args.variant, args.checkpoint, args.variant_params or {}, args.data, groups,
                    args.inits.split(","), spec, args.out, args.id or args.variant, args.max_targets, args.new_photos,
                    args.device, args.dtype, progress=not args.no_progress, searches_from=args.searches_from,
                    images=images,
                    chosen=json_object(args.targets_json) if args.targets_json else None,
                    subset=json_object(args.subset_json) if args.subset_json else None, sscd=args.sscd,
                    chunk=tuple(int(x) for x in args.chunk.split(":")) if args.chunk else None,
                    height=args.height, width=args.width, per_call=args.searches_per_call)

    def table(args):
        import pandas as pd

        from memprune.attacks.recovery_report import recovery_figure, summary
        from memprune.formats.store import atomic_file, write_netcdf

        ds, rows = summary([Path(p) for p in args.variants])
        frame = pd.DataFrame(rows)
        ds.attrs["table"] = frame.to_json(orient="records")
        write_netcdf(ds, args.out)
        with atomic_file(Path(args.csv)) as tmp:
            frame.to_csv(tmp, index=False)
        print(frame.to_string(index=False))
        if args.figure:
            recovery_figure(ds, Path(args.figure))

    p = sub.add_parser("recover", help="recovery attack (Finding Dori) on one model variant: MR after a "
                                       "text-embedding search")
    add_model_args(p, sampling=False)
    add_size_args(p)
    p.add_argument("--variant", required=True, help="a registry name (none, pruned, wen)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--variant-params", type=json_object, default=None)
    p.add_argument("--id", default=None, help="the variant's id in the table")
    p.add_argument("--data", default=None, help="the testbed dataset (the targets' training photos)")
    p.add_argument("--images-json", default=None,
                   help="or {group: [root, prompt file]}: fetched images, <root>/<index>/*.png")
    p.add_argument("--groups-json", required=True, help='{group: prompt file}: targets and controls')
    p.add_argument("--inits", default="prompt", help=f"comma-separated starts: {','.join(INITS)}")
    p.add_argument("--spec", default="{}", help="JSON of RecoverySpec fields")
    p.add_argument("--max-targets", type=int, default=None)
    p.add_argument("--targets-json", default=None,
                   help="{group: [prompt indices]}: the targets (the plan's), instead of the first --max-targets")
    p.add_argument("--subset-json", default=None,
                   help="{group: [prompt indices]}: the prompts whose masks made the edit "
                        "(targets' split: subset / heldout)")
    p.add_argument("--new-photos", type=int, default=0)
    p.add_argument("--searches-from", default=None,
                   help="the unedited model's recovery file: an inference-time variant (wen) reuses its searches")
    p.add_argument("--sscd", default=None, help="SSCD TorchScript checkpoint that decides copies (default: SSIM)")
    p.add_argument("--chunk", default=None, help="K:N, the K-th run of N targets (recovery-merge joins the runs)")
    p.add_argument("--searches-per-call", type=int, default=1,
                   help="(target, start) searches batched into one UNet call (attacks/recovery_batch.py)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    from memprune.attacks.recovery_chunks import add_merge_argument

    add_merge_argument(sub)
    p = sub.add_parser("recovery-table", help="merge recovery files: recovery.nc, DoRI's table, figure")
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--figure", default=None)
    p.set_defaults(func=table)
