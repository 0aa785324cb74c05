"""Generation time of every compared model under the same load: the leaderboard's cost per generated image.

Evaluation times each model in its own job, so two models' times compare only where their jobs ran at the same
load (on a shared machine a job beside another runs up to several times slower). Here every model generates the
same prompts and seeds through the variant registry (as evaluation does) in one process, round by round with the
order rotated every round, so a noisy machine slows them alike. Each timed call follows a warm-up call of the same
model at the same batch; a model is loaded for its turn and released after it, so one model at a time is in
memory (an SD config compares 25). The UNet runs eager (a compiled one would recompile at every load). Per model:
the median over rounds of its seconds per image, of its seconds minus the unedited model's in the same round, and
of their ratio.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import replace

import numpy as np

from memprune.errors import InputError
from memprune.evaluate.leaderboard import REFERENCE

log = logging.getLogger(__name__)


def interleaved_times(run, names: list[str], rounds: int, warm_up: bool = True) -> dict[str, list[float]]:
    """{name: [seconds of each round]}: `run(name)` once per name to warm up (unless `warm_up` is False: `run`
    warms up itself), then `rounds` rounds, the order rotated by one every round."""
    for name in names if warm_up else ():
        run(name)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(run(name))
    return times


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_models(model_dir: str, entries: dict[str, dict], prompts: list[str], cfg, rounds: int = 3,
                device: str = "auto", dtype: str = "auto", scheduler: str | None = None):
    """An xarray Dataset of the generation time of `entries` {model id: {"variant", "checkpoint", "params"}} (the
    unedited model "none" among them) on `prompts` (seeds 0..n-1), each batch of `cfg` (a SamplingConfig)."""
    import xarray as xr

    from memprune import variants as registry

    if REFERENCE not in entries:
        raise InputError(f"timing: the models must include the unedited model {REFERENCE!r}")
    if rounds < 1 or not prompts:
        raise InputError("timing: needs at least one round and one prompt (leaderboard.timing.rounds, .prompts)")
    seeds, cfg = list(range(len(prompts))), replace(cfg, compile=False)
    for name, entry in entries.items():
        if registry.get(entry["variant"]).needs_checkpoint and not entry.get("checkpoint"):
            raise InputError(f"timing: model {name!r} (variant {entry['variant']}) needs its edit checkpoint")

    def run(name: str) -> float:
        entry = entries[name]
        var = registry.get(entry["variant"])
        params = {**var.default_params, **(entry.get("params") or {})}
        pipe = var.load(model_dir, entry.get("checkpoint"), device, dtype, scheduler)
        var.generate(pipe, prompts, seeds, cfg, params, False)  # warm-up, at the batch timed
        start = time.perf_counter()
        var.generate(pipe, prompts, seeds, cfg, params, False)  # images come back as arrays: the device is done
        seconds = time.perf_counter() - start
        del pipe
        gc.collect()
        _empty_device_cache()
        return seconds

    names = list(entries)
    times = interleaved_times(run, names, rounds, warm_up=False)
    n = len(prompts)
    per_image = np.array([[t / n for t in times[name]] for name in names])
    ref = per_image[names.index(REFERENCE)]
    for name, row in zip(names, per_image):
        log.info("%s: %.4f s/image, %.3fx the unedited model", name, np.median(row), np.median(row / ref))
    return xr.Dataset(
        {
            "round_seconds_per_image": (("model", "round"), per_image, {"long_name": "seconds per image, each round"}),
            "seconds_per_image": ("model", np.median(per_image, axis=1), {"long_name": "median over rounds"}),
            "overhead_seconds_per_image": ("model", np.array([statistics.median(r - ref) for r in per_image]),
                                           {"long_name": "median over rounds of seconds per image minus the unedited "
                                                         "model's"}),
            "time_per_image_vs_none": ("model", np.array([statistics.median(r / ref) for r in per_image]),
                                       {"long_name": "median over rounds of the ratio to the unedited model"}),
        },
        coords={"model": names, "round": np.arange(rounds)},
        attrs={"prompts": n, "steps": cfg.steps, "guidance": cfg.guidance, "batch_size": cfg.batch_size,
               "rounds": rounds, "device": device,
               "compile": "false (eager)",
               "note": "every model in one process, loaded for its turn, a warm-up call at the batch timed before each "
                       "timed call, rounds interleaved (order rotated)"},
    )
