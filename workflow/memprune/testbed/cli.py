"""The subcommands of the derived testbeds: `memprune extend-data`, `plant` and `finetune-testbed`."""

from __future__ import annotations

import json


def _spec(cls, text: str, command: str):
    from memprune.errors import InputError
    from memprune.formats.prompts import json_object

    try:
        return cls(**json_object(text))
    except TypeError as e:
        raise InputError(f"{command} --spec: {e} "
                         f"({cls.__name__} fields: {', '.join(cls.__dataclass_fields__)})") from None


def cmd_extend_data(args) -> None:
    from pathlib import Path

    from memprune.testbed.derived import AddedSpec, extend_dataset

    extend_dataset(Path(args.data), _spec(AddedSpec, args.spec, "extend-data"), Path(args.out))


def cmd_plant(args) -> None:
    from pathlib import Path

    from memprune.testbed.planted import PlantSpec, plant

    truth = plant(Path(args.model), Path(args.data), Path(args.out), _spec(PlantSpec, args.spec, "plant"),
                  progress=not args.no_progress)
    print(json.dumps({k: truth[k] for k in ("fraction", "k", "units", "units_total", "steps", "seconds")}
                     | {"final_loss": truth["loss"][-1] if truth["loss"] else None}))


def cmd_finetune(args) -> None:
    from pathlib import Path

    from memprune.testbed.finetune import FinetuneSpec, finetune

    from memprune.errors import InputError

    snapshots = {}
    for item in args.snapshot or []:
        epochs, sep, where = item.partition("=")
        try:
            snapshots[float(epochs)] = Path(where)
        except ValueError:
            sep = ""
        if not sep or not where:
            raise InputError(f"finetune-testbed --snapshot {item!r}: expected EPOCHS=DIR (e.g. 16=results/ft16)")
    record = finetune(Path(args.model), Path(args.data), Path(args.out),
                      _spec(FinetuneSpec, args.spec, "finetune-testbed"),
                      progress=not args.no_progress, snapshots=snapshots)
    print(json.dumps({k: record[k] for k in ("samples", "steps", "seconds")}
                     | {"final_loss": record["loss"][-1] if record["loss"] else None}))


def add_testbed_plant_arguments(sub) -> None:
    """Register `extend-data`, `plant` and `finetune-testbed` on the subparsers `sub`."""
    p = sub.add_parser("extend-data", help="a derived testbed's dataset: the testbed dataset plus K new photos")
    p.add_argument("--data", required=True, help="the testbed dataset directory (manifest.jsonl)")
    p.add_argument("--spec", default="{}", help="JSON of AddedSpec fields (group planted|finetuned, k, duplication, "
                                               "seed, caption_pool)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.set_defaults(func=cmd_extend_data)

    def training(name, help_, data_help, spec_help, out_help, func):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model", required=True, help="the trained testbed pipeline (e.g. resources/testbed)")
        p.add_argument("--data", required=True, help=data_help)
        p.add_argument("--spec", default="{}", help=spec_help)
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=func)

    training("plant", "planted testbed: fine-tune only a seeded fraction of the GEGLU units on the planted photos; "
             "write the derived model and its ground truth (planted.json)",
             "its extended dataset (`memprune extend-data`, group planted)",
             "JSON of PlantSpec fields (fraction, steps, batch_size, lr, cond_dropout, own_share, hold_norms, seed, "
             "threads)",
             "output model directory (+ planted.json, planted/<i>.png)", cmd_plant)
    training("finetune-testbed", "finetune testbed: the paper's fine-tuning protocol (whole UNet, new photos "
             "duplicated); write the derived model",
             "its extended dataset (`memprune extend-data`, group finetuned)",
             "JSON of FinetuneSpec fields (epochs, batch_size, lr, warmup, weight_decay, cond_dropout, seed, threads)",
             "output model directory", cmd_finetune)
    sub.choices["finetune-testbed"].add_argument(
        "--snapshot", action="append", metavar="EPOCHS=DIR",
        help="also save the model after EPOCHS (< the spec's) to DIR, as a run of that many epochs writes it")
