"""NeMo's per-prompt search as cached data (`localize/nemo.py` holds the method).

  calibration.nc  per channel of the value layers: mean and sd of the text activation over non-memorized
                  prompts; per calibration prompt its memorization score; attribute `threshold` (mean + 1 sd)
  <set>.nc        per prompt of a set that collections draw from (prompt, channel): z-scores, the initial and the
                  refined neuron sets; per prompt: memorization score before and after blocking its refined set,
                  similarity of the blocked prediction, theta / k / rounds of the selection, UNet calls (`runs`)
                  and the predictions they made (`samples`), seconds;
                  `pool_index`: each prompt's line in its prompt set (a subset's edit: the union of its prompts)
Both are written atomically and record the model's UNet hash, so masks are never built from another model's search.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from memprune.errors import InputError
from memprune.sampling import text_embeddings as _embed

log = logging.getLogger(__name__)


def _setup(model: str, params: dict, device: str, dtype: str, height: int | None = None, width: int | None = None):
    from memprune.formats.edits import unet_sha256
    from memprune.localize import nemo
    from memprune.models import load_pipeline
    from memprune.sampling import latent_size

    pipe = load_pipeline(model, device, dtype)
    layers = nemo.value_layers(pipe.unet)
    seeds = list(range(int(params["seed"]), int(params["seed"]) + int(params["seeds"])))
    if len(seeds) < 2:
        raise InputError("config key localizers.nemo.seeds: NeMo's score needs >= 2 seeds")
    probe = nemo.Probe(pipe.unet, pipe.scheduler, layers, seeds, int(params["steps"]), int(params["step_index"]),
                       size=latent_size(pipe, height, width))  # the image size of config `sampling`
    return pipe, layers, probe, unet_sha256(pipe.unet)


def _channel_coords(layers) -> dict:
    names = [n for n, lin in layers for _ in range(lin.out_features)]
    index = [c for _, lin in layers for c in range(lin.out_features)]
    return {"channel": np.arange(len(names)), "channel_layer": ("channel", np.array(names, dtype=object)),
            "channel_index": ("channel", np.array(index))}


def calibrate(model: str, prompts: list[str], params: dict, out: str | Path, device="cpu", dtype="float32",
              height: int | None = None, width: int | None = None) -> dict:
    """Activation statistics and the memorization threshold from non-memorized `prompts` (the first
    `max_calibration` of a seeded shuffle), probed at `height` x `width` pixels (None: the model's resolution)."""
    import xarray as xr

    from memprune.localize import nemo
    from memprune.formats.store import write_netcdf

    if len(prompts) < 2:
        raise InputError("nemo calibration: needs >= 2 non-memorized prompts")
    order = np.random.default_rng(int(params["seed"])).permutation(len(prompts))[: int(params["max_calibration"])]
    prompts = [prompts[i] for i in sorted(order)]
    start = time.perf_counter()
    pipe, layers, probe, base_hash = _setup(model, params, device, dtype, height, width)
    embeds = _embed(pipe, prompts)
    act = nemo.text_activations(layers, embeds)
    scores = np.array([nemo.pairwise_max(probe.deltas(embeds[i : i + 1])).max() for i in range(len(prompts))])
    threshold = nemo.threshold_of(scores)
    ds = xr.Dataset(
        {"mean": ("channel", act.mean(0)), "std": ("channel", act.std(0, ddof=1)),
         "score": ("calibration_prompt", scores)},
        coords={**_channel_coords(layers), "calibration_prompt": np.array(prompts, dtype=object)},
        attrs={"threshold": threshold, "layers": [n for n, _ in layers], "params": json.dumps(params),
               "model": str(model), "base_unet_sha256": base_hash, "seconds": time.perf_counter() - start,
               "description": "NeMo calibration: activation mean / sd per value channel over non-memorized "
                              "prompts, their memorization scores, threshold = mean + 1 sd of the scores"})
    write_netcdf(ds, out)
    log.info("nemo calibration: %d prompts, threshold %.3f (scores %.3f +- %.3f)", len(prompts), threshold,
             scores.mean(), scores.std(ddof=1))
    return {"threshold": threshold, "prompts": len(prompts)}


def read_calibration(path: str | Path, base_hash: str | None = None):
    import xarray as xr

    try:
        ds = xr.load_dataset(path)
        ds.attrs["threshold"], ds.attrs["layers"]
    except (FileNotFoundError, OSError, KeyError, ValueError) as e:
        raise InputError(f"{path}: not a NeMo calibration file ({e})") from None
    if base_hash and ds.attrs.get("base_unet_sha256") != base_hash:
        raise InputError(f"{path}: calibrated on another model (UNet hash differs)")
    return ds


def search(model: str, pool: list[str], indices: list[int], calibration: str | Path, params: dict,
           out: str | Path, device="cpu", dtype="float32", progress: bool = False, height: int | None = None,
           width: int | None = None) -> dict:
    """NeMo's search for the prompts `pool[i]` of `indices` (each once), probed at `height` x `width` pixels (None:
    the model's resolution, as the calibration it reads); one file."""
    import xarray as xr
    from tqdm.auto import tqdm

    from memprune.localize import nemo
    from memprune.formats.store import write_netcdf

    indices = sorted({int(k) for k in indices})
    if any(k >= len(pool) or k < 0 for k in indices):
        raise InputError(f"nemo: subset index {max(indices)} outside the {len(pool)} prompts")
    prompts = [pool[k] for k in indices]
    pipe, layers, probe, base_hash = _setup(model, params, device, dtype, height, width)
    cal = read_calibration(calibration, base_hash)
    if list(cal.attrs["layers"]) != [n for n, _ in layers]:
        raise InputError(f"{calibration}: its layers are not the model's value layers")
    threshold = float(cal.attrs["threshold"])
    embeds = _embed(pipe, prompts)
    act = nemo.text_activations(layers, embeds)
    z = nemo.zscores(act, cal["mean"].values, cal["std"].values)
    n, c = act.shape
    results = []
    for i in tqdm(range(n), desc="nemo", disable=not progress):
        r = nemo.nemo_search(probe, embeds[i : i + 1], act[i], z[i], threshold, params)
        results.append(r)
        log.info("nemo %d/%d: score %.3f%s, %d initial -> %d refined neurons, similarity %.3f, %d runs, %.1fs",
                 i + 1, n, r["score"], " (memorized)" if r["memorized"] else "", len(r["initial"]), len(r["refined"]),
                 r["refined_similarity"], r["runs"], r["seconds"])
    initial, refined = np.zeros((n, c), bool), np.zeros((n, c), bool)
    for i, r in enumerate(results):
        initial[i, r["initial"]], refined[i, r["refined"]] = True, True
    per = {key: ("prompt", np.array([r[key] for r in results])) for key in (
        "memorized", "score", "looked_at", "initial_similarity", "theta", "k", "rounds", "refined_similarity",
        "score_blocked", "refine_capped", "runs", "samples", "seconds")}
    ds = xr.Dataset(
        {"z": (("prompt", "channel"), z.astype(np.float32)),
         "activation": (("prompt", "channel"), act.astype(np.float32)),
         "initial": (("prompt", "channel"), initial), "refined": (("prompt", "channel"), refined),
         "n_initial": ("prompt", initial.sum(1)), "n_refined": ("prompt", refined.sum(1)),
         **per},
        coords={**_channel_coords(layers), "prompt": np.array(prompts, dtype=object),
                "pool_index": ("prompt", np.array(indices))},
        attrs={"threshold": threshold, "layers": [n_ for n_, _ in layers], "params": json.dumps(params),
               "model": str(model), "base_unet_sha256": base_hash, "calibration": str(calibration),
               "description": "NeMo per-prompt neurons (localize/nemo.py): initial and refined sets over the "
                              "concatenated value channels, scores before / after blocking the refined set"})
    for key in ("refined", "initial", "memorized", "refine_capped"):
        ds[key] = ds[key].astype(np.uint8)  # netCDF has no bool
    write_netcdf(ds, out)
    return {"prompts": n, "memorized": int(sum(r["memorized"] for r in results)),
            "median_refined": float(np.median(refined.sum(1))) if n else 0.0,
            "seconds_per_prompt": float(np.mean([r["seconds"] for r in results])) if n else 0.0}


def read_neurons(path: str | Path, base_hash: str | None = None):
    import xarray as xr

    try:
        ds = xr.load_dataset(path)
        for key in ("refined", "memorized"):
            ds[key] = ds[key].astype(bool)
        ds.attrs["layers"], ds.attrs["threshold"]
    except (FileNotFoundError, OSError, KeyError, ValueError) as e:
        raise InputError(f"{path}: not a NeMo neurons file ({e})") from None
    if isinstance(ds.attrs["layers"], str):
        ds.attrs["layers"] = [ds.attrs["layers"]]
    if base_hash and ds.attrs.get("base_unet_sha256") != base_hash:
        raise InputError(f"{path}: neurons of another model (UNet hash differs)")
    return ds


MERGED_ATTRS = ("threshold", "layers", "params", "model", "base_unet_sha256", "calibration")  # equal in every chunk


def merge(chunks: list[str | Path], out: str | Path) -> int:
    """One neurons file from the chunk files of a prompt set's search (`chunks.nemo` prompts each), in prompt order:
    what one search job over all the prompts would write. The chunks must share calibration, parameters and model."""
    import xarray as xr

    from memprune.formats.store import write_netcdf

    parts = [xr.load_dataset(c) for c in chunks]
    parts = [ds.assign_coords(prompt=ds.prompt.values.astype(object)) for ds in parts]  # as written: not fixed-width
    if not parts:
        raise InputError("nemo-merge: no chunk files")
    for path, ds in zip(chunks[1:], parts[1:]):
        differ = [k for k in MERGED_ATTRS if str(ds.attrs.get(k)) != str(parts[0].attrs.get(k))]
        if differ:
            raise InputError(f"{path}: its {', '.join(differ)} differ from {chunks[0]}'s: rerun its search")
    merged = xr.concat(parts, dim="prompt", data_vars="minimal", coords="minimal", compat="override",
                       combine_attrs="override")
    if len(set(merged.pool_index.values.tolist())) != merged.sizes["prompt"]:
        raise InputError(f"nemo-merge: a prompt is searched in more than one of {[str(c) for c in chunks]}")
    write_netcdf(merged.sortby("pool_index"), out)
    return merged.sizes["prompt"]


def add_nemo_arguments(sub) -> None:
    """Register `nemo-calibrate`, `nemo` and `nemo-merge` on the subparsers `sub`."""
    from memprune.cliargs import add_size_args
    from memprune.formats.prompts import json_object, read_prompts

    def run_calibrate(args):
        prompts = [p for f in args.prompts_files for p in read_prompts(Path(f))]
        print(json.dumps(calibrate(args.model, prompts, _params(args.params), args.out, args.device, args.dtype,
                                   args.height, args.width)))

    def run_search(args):
        pool = read_prompts(Path(args.prompts_file))
        print(json.dumps(search(args.model, pool, json.loads(args.indices), args.calibration, _params(args.params),
                                args.out, args.device, args.dtype, progress=not args.no_progress,
                                height=args.height, width=args.width)))

    def _params(text):
        from memprune.localize import get

        return get("nemo").params(json_object(text))

    def common(p):
        p.add_argument("--model", required=True)
        p.add_argument("--params", default="{}", help="JSON of NeMo's parameters (localize/nemo.py DEFAULTS)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", default="float32")
        add_size_args(p)
        p.add_argument("--out", required=True, help="netCDF file")

    p = sub.add_parser("nemo-calibrate", help="NeMo: activation statistics and memorization threshold from "
                                              "non-memorized prompts")
    common(p)
    p.add_argument("--prompts-files", nargs="+", required=True, help="non-memorized prompt files")
    p.set_defaults(func=run_calibrate)
    p = sub.add_parser("nemo", help="NeMo: the neurons of each given prompt of a prompt set")
    common(p)
    p.add_argument("--prompts-file", required=True, help="the prompt set")
    p.add_argument("--indices", required=True, help="JSON list of the prompts' (0-based) lines")
    p.add_argument("--calibration", required=True, help="from `memprune nemo-calibrate`")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_search)
    p = sub.add_parser("nemo-merge", help="NeMo: one neurons file of a prompt set from its search chunks")
    p.add_argument("--chunks", nargs="+", required=True, help="the chunk files of `memprune nemo`")
    p.add_argument("--out", required=True, help="netCDF file")
    p.set_defaults(func=lambda args: print(json.dumps({"prompts": merge(args.chunks, args.out)})))
