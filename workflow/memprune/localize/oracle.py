"""The oracle of a planted testbed: the planted units' columns of ff.net.2 (planted.json beside the model), the
same for every subset. Zeroing them is the oracle edit, the positive control of the whole locate -> edit ->
evaluate path: where memorization is local by construction, removing its place must remove the copies. Only for
models with a ground truth (`memprune plant`); any other model is refused naming the file it lacks."""

from __future__ import annotations

import numpy as np

from memprune.localize import Localizer, pack, weight_mask_set
from memprune.errors import InputError


def locate(inputs, params):
    from memprune.testbed.planted import read_planted_units

    if not inputs.model:
        raise InputError("localizer oracle: no model directory to read planted.json from")
    truth = read_planted_units(inputs.model)
    missing = sorted(set(truth["layers"]) - set(inputs.weights))
    if missing:
        raise InputError(f"localizer oracle: planted layers {missing[:2]} are not ff.net.2 layers of {inputs.model}")
    union = {}
    for layer, w in inputs.weights.items():
        mask = np.zeros(tuple(w.shape), dtype=bool)
        mask[:, np.asarray(truth["layers"].get(layer, []), dtype=np.int64)] = True
        union[layer] = pack(mask)
    return weight_mask_set(inputs, union, None, {"planted_fraction": float(truth["fraction"])})


LOCALIZER = Localizer(name="oracle", description="planted testbed only: the planted units' ff.net.2 columns "
                                                "(planted.json beside the model); zeroing them is the oracle edit",
                      locate=locate, defaults={}, uses_timesteps=False)
