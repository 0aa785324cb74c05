"""The testbed subcommands of a planted testbed: `memprune plant`, its options and handler."""

from __future__ import annotations

import json


def cmd_plant(args) -> None:
    from pathlib import Path

    from ..prompts import InputError
    from ..prompts import json_object
    from .planted import PlantSpec, plant

    fields = json_object(args.spec)
    try:
        spec = PlantSpec(**fields)
    except TypeError as e:
        raise InputError(f"plant --spec: {e} (PlantSpec fields: {', '.join(PlantSpec.__dataclass_fields__)})") from None
    truth = plant(Path(args.model), Path(args.data), Path(args.out), spec, progress=not args.no_progress)
    print(json.dumps({k: truth[k] for k in ("fraction", "k", "units", "units_total", "steps", "seconds")}
                     | {"final_loss": truth["loss"][-1] if truth["loss"] else None}))


def add_testbed_plant_arguments(sub) -> None:
    """Register `plant` on the subparsers `sub`."""
    p = sub.add_parser("plant", help="planted testbed: fine-tune only a seeded fraction of the GEGLU units on K new "
                                     "photos; write the pipeline and its ground truth (planted.json)")
    p.add_argument("--model", required=True, help="the trained testbed pipeline (e.g. resources/testbed)")
    p.add_argument("--data", required=True, help="its dataset directory (manifest.jsonl)")
    p.add_argument("--spec", default="{}", help="JSON of PlantSpec fields (fraction, k, steps, batch_size, lr, "
                                               "cond_dropout, seed, threads)")
    p.add_argument("--out", required=True, help="output pipeline directory (+ planted.json, planted/<i>.png)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plant)
