"""The config's localizers as `Method`s: each entry's implementation, parameters (its own over the shared
`masks` keys over the module's defaults), the method it imitates and its path tag; the plan's checks on them."""

from __future__ import annotations

from memprune.plan.types import Method, PromptSet, key_error

TAG_NAMES = {"sparsity": "sp", "theta_step": "dth", "theta_min": "thmin", "step_index": "at", "max_refine": "ref",
             "max_calibration": "ncal", "calibration": "on"}  # parameter names shortened in path tags


def build_methods(config: dict, sets: dict[str, PromptSet], act_tag: str) -> dict[str, Method]:
    """The localizers of `config` in order, checked: a control imitates one listed before it, a per-prompt method
    names its calibration sets, and one method gives per-timestep masks (the analysis's IOU over time)."""
    from memprune import localize

    shared = config["masks"]
    methods, per_step = {}, {}
    for name, given in config["localizers"].items():
        given = dict(given or {})
        impl = given.pop("localizer", name)  # e.g. random_nemo: {localizer: random, like: nemo}
        loc = localize.get(impl)
        params = loc.params({k: v for k, v in {**shared, **given}.items() if k in loc.defaults})
        ref = params.get("like") if loc.reference else None
        if loc.reference and ref not in methods:
            raise key_error(f"localizers.{name}.like",
                            f"{ref!r} is not a localizer listed before it; known: {sorted(methods)}")
        if loc.per_prompt and not params.get("calibration"):
            raise key_error(f"localizers.{name}.calibration", "name the non-memorized prompt sets it calibrates on")
        for set_name in params.get("calibration") or ():
            if set_name not in sets or sets[set_name].detected:
                raise key_error(f"localizers.{name}.calibration",
                                f"{set_name!r} is not a prompt set read from a file")

        def value(v):
            return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else v

        own = "_".join(f"{TAG_NAMES.get(k, k)}{value(v)}" for k, v in params.items() if k != "like")
        if loc.statistics:
            tag = f"{act_tag}_{own}"
        elif ref:
            tag = f"{ref}-{methods[ref].tag}_{own}"
        else:
            tag = own or "default"  # a method without parameters (oracle)
        methods[name] = Method(name, params, tag, tuple(loc.statistics), ref, impl, loc.per_prompt)
        per_step[name] = loc.uses_timesteps and (per_step[ref] if ref else True)  # random: as the one it imitates
    if not methods:
        raise key_error("localizers", "no localizer listed")
    if not any(per_step.values()):  # the analysis's IOU over time (rules/analysis.smk) needs one
        raise key_error("localizers", f"none of {sorted(methods)} gives per-timestep masks, which the analysis "
                                      "(iou.nc over time) needs: list one that does, e.g. wanda: {}")
    return methods
