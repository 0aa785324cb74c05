"""Each localizer on known inputs: a planted column is found first; random has the requested counts; magnitude
ignores activations; activation ignores |W|; the registry finds every module."""

import numpy as np
import pytest
import torch

from memprune import localize
from memprune.localize.wanda_scores import memorized_mask, union_over_timesteps
from memprune.localize.wanda_packed import unpack


def _inputs(seed=0, out_f=6, in_f=40, steps=4, n=3, planted=None, weight=None):
    g = torch.Generator().manual_seed(seed)
    w = weight if weight is not None else torch.rand(out_f, in_f, generator=g) + 0.1
    null = torch.rand(steps, in_f, generator=g).double() + 0.5
    mem = n * null * (1 + torch.rand(steps, in_f, generator=g).double())
    if planted is not None:
        mem[:, planted] *= 1e4  # one input feature far more active for the memorized prompts than for ""
    return localize.Inputs(weights={"layer.ff.net.2": w.float()}, n_prompts=n,
                           memorized={"layer.ff.net.2": mem.numpy()},
                           null={"layer.ff.net.2": null.numpy()}, steps=np.arange(steps),
                           t=np.arange(steps)[::-1] * 10.0,
                           rng=np.random.default_rng(seed))


def _union(ms):
    layer = ms.layers[0]
    return unpack(ms.union[layer], ms.grid[layer][1])


def test_registry_lists_the_modules():
    assert {"wanda", "magnitude", "activation", "random"} <= set(localize.names())
    with pytest.raises(Exception, match="unknown localizer"):
        localize.get("nosuch")
    with pytest.raises(Exception, match="unknown parameter"):
        localize.get("wanda").params({"sparsity": 0.1, "sparsty": 2})


def test_wanda_finds_a_planted_column_first_and_equals_the_written_equations():
    inputs = _inputs(planted=7)
    params = {"sparsity": 1 / 40, "tau": 2}  # k = 1 per row
    ms = localize.get("wanda").locate(inputs, params)
    union = _union(ms)
    assert union[:, 7].all() and union.sum() == union.shape[0]  # the top-1 of every row is the planted feature
    w, mem, null = inputs.weights["layer.ff.net.2"], inputs.memorized["layer.ff.net.2"], inputs.null["layer.ff.net.2"]
    for sparsity in (0.1, 0.3):
        ms = localize.get("wanda").locate(inputs, {"sparsity": sparsity, "tau": 3})
        steps = np.stack([memorized_mask(w, torch.from_numpy(mem[t]).float(), torch.from_numpy(null[t]).float(), 3,
                                         sparsity).numpy()
                          for t in range(4)])
        assert np.array_equal(unpack(ms.per_step["layer.ff.net.2"], 40), steps)
        assert np.array_equal(_union(ms), union_over_timesteps(torch.from_numpy(steps), 3).numpy())


def test_magnitude_ignores_activations():
    a, b = _inputs(seed=0), _inputs(seed=0)
    b.memorized = {k: v[::-1] * 100 for k, v in b.memorized.items()}
    b.null = None
    ma = localize.get("magnitude").locate(a, {"sparsity": 0.1})
    mb = localize.get("magnitude").locate(b, {"sparsity": 0.1})
    assert np.array_equal(_union(ma), _union(mb)) and ma.per_step is None
    w = a.weights["layer.ff.net.2"].abs()
    top = torch.topk(w, 4, dim=1).indices
    expected = np.zeros(w.shape, bool)
    np.put_along_axis(expected, top.numpy(), True, axis=1)
    assert np.array_equal(_union(ma), expected)


def test_activation_ignores_the_weights_and_finds_a_planted_feature():
    w = torch.rand(6, 40) + 1.0
    w[:, 7] = 1e-6  # Wanda would never rank this column: its weights are tiny
    inputs = _inputs(planted=7, weight=w)
    ms = localize.get("activation").locate(inputs, {"sparsity": 1 / 40, "tau": 4})
    assert _union(ms)[:, 7].all() and _union(ms).sum() == 6
    wanda = localize.get("wanda").locate(inputs, {"sparsity": 1 / 40, "tau": 4})
    assert not _union(wanda)[:, 7].any()
    # no feature beats the null prompt: nothing is selected
    inputs.memorized = {k: np.zeros_like(v) for k, v in inputs.memorized.items()}
    assert not _union(localize.get("activation").locate(inputs, {"sparsity": 0.1, "tau": 4})).any()


def test_random_keeps_the_counts_per_row_and_step_and_is_seeded():
    ref = localize.get("wanda").locate(_inputs(planted=3), {"sparsity": 0.2, "tau": 2})
    layer = ref.layers[0]

    def draw(seed):
        inputs = localize.Inputs(weights={}, reference=ref, rng=np.random.default_rng(seed))
        return localize.get("random").locate(inputs, {"like": "wanda", "seed": seed})

    a, b, c = draw(0), draw(0), draw(1)
    ref_steps = unpack(ref.per_step[layer], 40)
    a_steps = unpack(a.per_step[layer], 40)
    assert np.array_equal(a_steps.sum(-1), ref_steps.sum(-1))  # per (step, row)
    assert np.array_equal(_union(a).sum(-1), _union(ref).sum(-1))  # the union's own counts per row
    assert np.array_equal(a.per_step[layer], b.per_step[layer])
    assert not np.array_equal(a.per_step[layer], c.per_step[layer])
    assert not np.array_equal(_union(a), _union(ref))


def test_oracle_returns_the_planted_columns_and_refuses_a_model_without_an_answer(tmp_path):
    import json

    from memprune.errors import InputError

    inputs = _inputs()
    inputs.model = str(tmp_path)
    with pytest.raises(InputError, match="planted.json"):
        localize.get("oracle").locate(inputs, {})
    (tmp_path / "planted.json").write_text(json.dumps({
        "layers": {"layer.ff.net.2": [3, 9]}, "fraction": 0.05, "k": 1, "seed": 0, "prompts": ["p"],
        "base_unet_sha256": "x"}))
    ms = localize.get("oracle").locate(inputs, {})
    union = _union(ms)
    assert union[:, [3, 9]].all() and union.sum() == 2 * union.shape[0] and ms.per_step is None
    (tmp_path / "planted.json").write_text(json.dumps({
        "layers": {"other.ff.net.2": [1]}, "fraction": 0.05, "k": 1, "seed": 0, "prompts": ["p"],
        "base_unet_sha256": "x"}))
    with pytest.raises(InputError, match="not ff.net.2 layers"):
        localize.get("oracle").locate(inputs, {})
