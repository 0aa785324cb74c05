"""NeMo (localize/nemo.py, memprune.localize.nemo_search): z-scores, the threshold, the edit, and the search on a tiny
model whose memorization is planted in one to_v channel."""

import json

import numpy as np
import pytest
import torch

from memprune.localize import nemo


def test_zscores_against_known_mean_and_std():
    act = np.array([[1.0, 5.0, 2.0], [3.0, -1.0, 2.0]])
    z = nemo.zscores(act, np.array([2.0, 1.0, 2.0]), np.array([0.5, 2.0, 0.0]))
    np.testing.assert_allclose(z, [[2.0, 2.0, 0.0], [2.0, 1.0, 0.0]])
    assert np.isinf(nemo.zscores(np.array([[3.0]]), np.array([2.0]), np.array([0.0])))[0, 0]


def test_threshold_is_mean_plus_one_sd():
    scores = np.array([0.2, 0.3, 0.4, 0.5])
    assert nemo.threshold_of(scores) == pytest.approx(0.35 + np.std(scores, ddof=1))
    with pytest.raises(Exception, match="calibration"):
        nemo.threshold_of(np.array([0.3]))


def test_ssim_of_identical_images_is_one_and_of_noise_low():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    np.testing.assert_allclose(nemo.ssim(a, a).numpy(), 1.0, atol=1e-5)
    assert float(nemo.ssim(a, b).max()) < 0.5


def test_value_layers_are_down_and_mid_cross_attention_without_bias(tiny_pipe):
    layers = nemo.value_layers(tiny_pipe.unet)
    names = [n for n, _ in layers]
    assert names and all(n.endswith("attn2.to_v") for n in names)
    assert all(n.startswith(("down_blocks.", "mid_block.")) for n in names) and names[-1].startswith("mid_block.")
    assert all(lin.bias is None for _, lin in layers)


class _ToyDenoiser(torch.nn.Module):
    """A stand-in with the UNet's call and config: two value layers read the text; the prediction is
    eps = x + 0.5 tanh(conv(x)) + sum_c mean_tokens(to_v(y))_c * P_c, with a fixed spatial pattern P_c per
    value channel (small weights, so a normal prompt's prediction follows its noise). Channel `planted` of the
    first layer answers only to a direction v of the text embedding (every other row is orthogonal to v), so a
    trigger embedding (+ 10 v on every token) makes its pattern dominate: the same prediction at every seed,
    as a memorized prompt's. Only that channel makes it so."""

    def __init__(self, dim, planted, size=8, channels=4):
        super().__init__()
        from types import SimpleNamespace

        g = torch.Generator().manual_seed(0)
        self.config = SimpleNamespace(in_channels=channels, sample_size=size)
        self.to_v = torch.nn.ModuleList([torch.nn.Linear(dim, 12, bias=False), torch.nn.Linear(dim, 20, bias=False)])
        self.v = torch.randn(dim, generator=g)
        self.v /= self.v.norm()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for lin in self.to_v:
                lin.weight.copy_(0.3 * torch.randn(lin.weight.shape, generator=g))
                lin.weight -= (lin.weight @ self.v)[:, None] * self.v[None, :]
            self.to_v[0].weight[planted] = 20.0 * self.v
        self.register_buffer("patterns", 0.02 * torch.randn(32, channels, size, size, generator=g))

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32

    def forward(self, x, t, encoder_hidden_states):
        from types import SimpleNamespace

        v = torch.cat([lin(encoder_hidden_states).mean(1) for lin in self.to_v], dim=1)  # (B, 32)
        eps = x + 0.5 * torch.tanh(self.conv(x)) + torch.einsum("bc,chw...->bhw...", v,
                                                                self.patterns.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return SimpleNamespace(sample=eps)


def test_search_finds_the_planted_channel_and_refinement_keeps_it(tiny_pipe):
    from diffusers import DDIMScheduler

    planted, dim = 3, 16
    model = _ToyDenoiser(dim, planted)
    layers = [(f"v{i}", lin) for i, lin in enumerate(model.to_v)]
    g = torch.Generator().manual_seed(2)
    calib = torch.randn(12, 6, dim, generator=g)  # non-memorized "prompts": text embeddings (tokens x dim)
    trigger = torch.randn(1, 6, dim, generator=g) + 10.0 * model.v
    probe = nemo.Probe(model, DDIMScheduler(), layers, seeds=list(range(6)), steps=10, step_index=1)
    act = nemo.text_activations(layers, calib)
    mean, std = act.mean(0), act.std(0, ddof=1)
    scores = np.array([nemo.pairwise_max(probe.deltas(calib[i : i + 1])).max() for i in range(len(calib))])
    threshold = nemo.threshold_of(scores)
    a = nemo.text_activations(layers, trigger)[0]
    z = nemo.zscores(a, mean, std)
    assert z[planted] > 5 and int(np.argmax(z)) == planted
    result = nemo.nemo_search(probe, trigger, a, z, threshold, dict(nemo.DEFAULTS))
    assert result["memorized"] and result["score"] > scores.max()  # above every non-memorized prompt
    assert result["initial"] == [planted]  # theta = 5 picks it at once
    assert result["refined"] == [planted]  # refinement keeps the planted channel, and only it
    assert result["refined_similarity"] < threshold
    assert result["score_blocked"] < threshold < result["score"]
    # a wider initial set (theta low, k high) is refined back to the planted channel
    wide = nemo.nemo_search(probe, trigger, a, z, threshold, {**nemo.DEFAULTS, "theta": 1.0, "k": 3})
    assert len(wide["initial"]) > 3 and wide["refined"] == [planted]


def _search_unbatched(probe, embed, activation, z, threshold, params):
    """NeMo's search written out: one UNet call (every seed) per candidate set, in order."""
    reference = probe.deltas(embed)
    per_seed = nemo.pairwise_max(reference)
    look = per_seed >= threshold
    if not look.any():
        look = per_seed == per_seed.max()

    def similarity(blocked):
        return float(nemo.ssim(reference[look], probe.deltas(embed, blocked)[look]).max())

    slices = [slice(probe.offsets[i], probe.offsets[i + 1]) for i in range(len(probe.layers))]
    theta, k, rounds = float(params["theta"]), int(params["k"]), 0
    while True:
        chosen = set(np.nonzero(z > theta)[0].tolist())
        for sl in slices:
            chosen.update((np.argsort(-activation[sl], kind="stable")[:k] + sl.start).tolist())
        sim, rounds = similarity(chosen), rounds + 1
        if sim < threshold or theta <= params["theta_min"]:
            break
        theta, k = max(theta - params["theta_step"], params["theta_min"]), k + 1
    level, blocked = (threshold if sim < threshold else sim), set(chosen)
    for sl in reversed(slices):
        in_layer = {c for c in blocked if sl.start <= c < sl.stop}
        if in_layer and similarity(blocked - in_layer) < level:
            blocked -= in_layer
    for c in sorted(blocked, reverse=True):
        if similarity(blocked - {c}) < level:
            blocked.discard(c)
    return {"initial": sorted(chosen), "initial_similarity": sim, "theta": theta, "k": k, "rounds": rounds,
            "refined": sorted(blocked)}


def _same_search(batched, unbatched):
    for key in ("initial", "theta", "k", "rounds", "refined"):
        assert batched[key] == unbatched[key], key
    assert batched["initial_similarity"] == pytest.approx(unbatched["initial_similarity"], abs=1e-6)


class _RoundsAbove(_ToyDenoiser):
    """The stand-in, its prediction rounded differently (one float32 step) in calls of more than `above` samples,
    as oneDNN's shape-chosen kernels do."""

    above = 6

    def forward(self, x, t, encoder_hidden_states):
        out = super().forward(x, t, encoder_hidden_states)
        if len(x) > self.above:
            out.sample = torch.nextafter(out.sample, torch.full_like(out.sample, float("inf")))
        return out


def test_the_probe_makes_no_call_larger_than_those_that_round_alike():
    """`invariant_batch` finds the largest call size whose samples get the bits of a MIN_BATCH call; the probe
    keeps to it from its first prompt on, and the check is not counted as the search's cost."""
    from diffusers import DDIMScheduler

    model = _RoundsAbove(16, 3)
    layers = [(f"v{i}", lin) for i, lin in enumerate(model.to_v)]
    embed = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1))
    probe = nemo.Probe(model, DDIMScheduler(), layers, seeds=list(range(10)), steps=10, step_index=1, batch=12)
    assert probe.invariant_batch(embed) == 6 and (probe.runs, probe.samples) == (0, 0)
    probe.start(embed, probe.deltas(embed))
    assert probe.batch == 6
    calls = []
    model.register_forward_hook(lambda m, i, out: calls.append(len(i[0])))
    probe.similarities([(frozenset([c]), s) for c in range(3) for s in range(10)])
    assert max(calls) == 6 and min(calls) >= probe.min_batch
    model.above = 12
    assert nemo.Probe(model, DDIMScheduler(), layers, seeds=list(range(10)), steps=10, step_index=1,
                      batch=12).invariant_batch(embed) == 12


def test_batched_search_takes_the_unbatched_decisions_on_a_stand_in():
    """Several candidate sets and seeds per call, early stops, speculation past the open test (batch 5 and 12):
    the same rounds, initial and refined sets as one call per candidate, in fewer predictions."""
    from diffusers import DDIMScheduler

    planted, dim = 3, 16
    model = _ToyDenoiser(dim, planted)
    layers = [(f"v{i}", lin) for i, lin in enumerate(model.to_v)]
    g = torch.Generator().manual_seed(2)
    calib = torch.randn(12, 6, dim, generator=g)
    act = nemo.text_activations(layers, calib)
    mean, std = act.mean(0), act.std(0, ddof=1)
    prompts = {"trigger": torch.randn(1, 6, dim, generator=g) + 10.0 * model.v, "plain": calib[:1],
               "weak": torch.randn(1, 6, dim, generator=g) + 2.5 * model.v}
    probe = nemo.Probe(model, DDIMScheduler(), layers, seeds=list(range(6)), steps=10, step_index=1)
    scores = [nemo.pairwise_max(probe.deltas(calib[i : i + 1])).max() for i in range(len(calib))]
    threshold = nemo.threshold_of(np.array(scores))
    outcomes, costs = set(), {"unbatched": 0, 5: 0, 12: 0}
    for embed in prompts.values():
        a = nemo.text_activations(layers, embed)[0]
        z = nemo.zscores(a, mean, std)
        for params in ({**nemo.DEFAULTS}, {**nemo.DEFAULTS, "theta": 1.0, "k": 3},
                       {**nemo.DEFAULTS, "theta": 3.0, "k": 2, "theta_step": 1.0}):
            start = probe.samples
            plain = _search_unbatched(probe, embed, a, z, threshold, params)
            costs["unbatched"] += probe.samples - start
            for batch in (5, 12):
                probe.batch = batch
                found = nemo.nemo_search(probe, embed, a, z, threshold, params)
                _same_search(found, plain)
                costs[batch] += found["samples"]
            outcomes.add((len(plain["initial"]) > len(plain["refined"]), len(plain["refined"]) > 0))
    assert (True, True) in outcomes  # refinements that drop neurons and keep some
    assert costs[12] < costs["unbatched"] and costs[5] < costs["unbatched"], costs


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_prefix_reuse_gives_the_full_calls_bits(tiny_pipe):
    """On a diffusers UNet, candidates that differ only in the mid block's value channels skip the down blocks
    (their recorded outputs) and get the same bits as the full call; the search takes the unbatched decisions."""
    from memprune.sampling import text_embeddings

    unet = tiny_pipe.unet
    layers = nemo.value_layers(unet)
    probe = nemo.Probe(unet, tiny_pipe.scheduler, layers, seeds=list(range(6)), steps=10, step_index=1)
    full = nemo.Probe(unet, tiny_pipe.scheduler, layers, seeds=list(range(6)), steps=10, step_index=1)
    full._prefix = None
    embed = text_embeddings(tiny_pipe, ["a red house by the sea"])
    reference = probe.deltas(embed)
    for p in (probe, full):
        p.start(embed, reference)
    mid = range(probe.offsets[-2], probe.offsets[-1])
    base = frozenset([0, 1, probe.offsets[1]] + list(mid)[:4])
    pairs = [(base - {c}, s) for c in list(mid)[:4] for s in range(6)]  # two calls of 12 (batch sizes as the full's)
    probe.similarities(pairs[:12])  # records the down blocks' outputs under base's down channels
    assert probe._prefix.level([b for b, _ in pairs[12:]], [s for _, s in pairs[12:]]) == len(unet.down_blocks) + 1
    np.testing.assert_array_equal(probe.similarities(pairs), full.similarities(pairs))
    assert probe._prefix.checked and probe._prefix.on
    a = nemo.text_activations(layers, embed)[0]
    z = np.random.default_rng(0).uniform(0, 3, len(a))  # about 1 in 6 channels over theta
    per_seed = nemo.pairwise_max(reference)
    for threshold in (float(np.median(per_seed)), float(per_seed.max()) * 0.999):
        params = {**nemo.DEFAULTS, "theta": 2.5, "theta_step": 0.5, "theta_min": 2.0}
        _same_search(nemo.nemo_search(probe, embed, a, z, threshold, params),
                     _search_unbatched(full, embed, a, z, threshold, params))


def test_union_masks_and_the_edit_zero_exactly_the_chosen_rows(tiny_pipe):
    import copy

    import xarray as xr

    from memprune.formats.edits import apply
    from memprune.localize import Inputs

    layers = nemo.value_layers(tiny_pipe.unet)
    widths = [lin.out_features for _, lin in layers]
    n = sum(widths)
    refined = np.zeros((3, n), bool)
    refined[0, [1, widths[0] + 2]] = True
    refined[1, [n - 1]] = True
    refined[2, [5]] = True  # not in the subset below
    ds = xr.Dataset({"refined": (("prompt", "channel"), refined), "memorized": ("prompt", np.ones(3, bool))},
                    coords={"prompt": np.array(["a", "b", "c"], dtype=object), "pool_index": ("prompt", [4, 7, 9])},
                    attrs={"layers": [name for name, _ in layers], "threshold": 0.5})
    weights = {name: lin.weight.detach() for name, lin in layers}
    ms = nemo.locate(Inputs(weights=weights, neurons=ds, subset_indices=[7, 4]), {})
    assert sorted(ms.attrs["prompts"]) == ["a", "b"] and ms.n_set() == {layers[0][0]: 1, layers[1][0]: 1,
                                                                        layers[-1][0]: 1}
    unet = copy.deepcopy(tiny_pipe.unet)
    apply(unet, ms.layer_masks())
    for li, (name, _) in enumerate(layers):
        w, w0 = unet.get_submodule(name).weight, tiny_pipe.unet.get_submodule(name).weight
        zero_rows = set(torch.nonzero((w == 0).all(dim=1)).flatten().tolist())
        expect = {1} if li == 0 else ({2} if li == 1 else ({widths[-1] - 1} if li == len(layers) - 1 else set()))
        assert zero_rows == expect
        keep = [r for r in range(w.shape[0]) if r not in expect]
        assert torch.equal(w[keep], w0[keep])
    with pytest.raises(Exception, match="not searched"):
        nemo.locate(Inputs(weights=weights, neurons=ds, subset_indices=[4, 5]), {})


@pytest.mark.slow
def test_nemo_in_the_dag_beside_wanda_iou_masks_and_rerun(tiny_model, tmp_path):
    """NeMo and its random control run as localizers of the DAG: iou.nc holds them under their own (value)
    layers beside Wanda's FFN layers; the neurons file records every searched prompt; a killed search leaves no
    file, and the rerun gives the same neurons."""
    import os
    import signal
    import subprocess
    import sys

    import xarray as xr

    from conftest import REPO, snakemake, write_config
    from memprune.formats.masks import read_mask_set

    mem = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:4]
    ctrl = (REPO / "resources/prompts/testbed/single.txt").read_text().splitlines()[:4]
    nemo_params = {"calibration": ["ctrl"], "seeds": 3, "steps": 4, "max_refine": 4}
    write_config(tmp_path, tiny_model, {"mem": mem, "ctrl": ctrl},
                 {"m": {"set": "mem", "n_subsets": 2, "size": 2, "seed": 1}},  # ctrl: NeMo's calibration only
                 sampling={"steps": 4, "guidance": 3.0, "batch_size": 4, "seed": 0},
                 localizers={"wanda": {}, "nemo": nemo_params, "random_nemo": {"localizer": "random", "like": "nemo"}})
    snakemake(tmp_path, "results/iou.nc")
    ds = xr.open_dataset(tmp_path / "results/iou.nc", engine="h5netcdf").load()
    assert list(ds.localizer.values) == ["wanda", "nemo", "random_nemo"]
    value = [l for l in ds.layer.values if str(l).endswith("attn2.to_v")]
    ffn = [l for l in ds.layer.values if str(l).endswith("ff.net.2")]
    assert value and ffn
    assert np.isnan(ds.mean_iou_union.sel(localizer="nemo", layer=ffn[0], mask_type="found")).all()
    assert np.isnan(ds.mean_iou_union.sel(localizer="wanda", layer=value[0], mask_type="found")).all()
    tag = next((tmp_path / "results/tiny/masks/nemo").iterdir()).name
    ms = read_mask_set(tmp_path / f"results/tiny/masks/nemo/{tag}/m/0.zarr")
    rnd = read_mask_set(next((tmp_path / "results/tiny/masks/random_nemo").iterdir()) / "m/0.zarr")
    assert set(ms.kinds.values()) == {"rows"} and rnd.n_set() == ms.n_set()  # equal counts per layer
    neurons = tmp_path / f"results/tiny/nemo/{tag}/neurons/mem.nc"
    searched = xr.open_dataset(neurons, engine="h5netcdf").load()
    from memprune.plan.subsets import draw_subsets

    assert searched.pool_index.values.tolist() == sorted({i for s in draw_subsets(4, 2, 2, 1) for i in s})
    assert (searched.n_refined <= searched.n_initial).all() and searched.attrs["threshold"] > 0

    out = tmp_path / "killed.nc"
    cmd = [sys.executable, "-m", "memprune", "nemo", "--model", str(tiny_model), "--prompts-file",
           str(tmp_path / "mem.txt"),
           "--indices", json.dumps(searched.pool_index.values.tolist()[:2]), "--calibration",
           str(tmp_path / f"results/tiny/nemo/{tag}/calibration.nc"),
           "--params", json.dumps({**nemo.DEFAULTS, **nemo_params}), "--device", "cpu", "--dtype", "float32",
           "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:  # killed once the first prompt's search is done, before the file is written
        if "INFO nemo 1/" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run(cmd, check=True, capture_output=True)
    again = xr.open_dataset(out, engine="h5netcdf").load()  # the first two searched prompts, as the DAG found them
    np.testing.assert_array_equal(again.refined.values, searched.refined.values[:2])


def test_a_set_searched_in_chunks_merges_into_the_one_job_file(tiny_model, tmp_path):
    """NeMo's search cut into jobs (config `chunks.nemo`): the merged chunks equal one search over every prompt,
    the searches' timing and UNet-call counts apart; chunks of other calibrations are refused."""
    import xarray as xr

    from conftest import REPO
    from memprune.errors import InputError
    from memprune.localize import nemo_search

    pool = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:5]
    calib = (REPO / "resources/prompts/testbed/single.txt").read_text().splitlines()[:6]
    params = {**nemo.DEFAULTS, "seeds": 3, "steps": 4, "max_refine": 3, "calibration": ["c"]}
    cal = tmp_path / "calibration.nc"
    nemo_search.calibrate(str(tiny_model), calib, params, cal)
    indices = [0, 2, 3, 4]
    nemo_search.search(str(tiny_model), pool, indices, cal, params, tmp_path / "one.nc")
    chunks = [tmp_path / "chunk0.nc", tmp_path / "chunk1.nc"]
    nemo_search.search(str(tiny_model), pool, indices[:3], cal, params, chunks[0])
    nemo_search.search(str(tiny_model), pool, indices[3:], cal, params, chunks[1])
    assert nemo_search.merge(chunks, tmp_path / "merged.nc") == 4
    one, merged = (xr.load_dataset(tmp_path / f) for f in ("one.nc", "merged.nc"))
    timing = ["seconds", "runs", "samples"]
    xr.testing.assert_identical(one.drop_vars(timing), merged.drop_vars(timing))
    other = tmp_path / "other.nc"
    nemo_search.calibrate(str(tiny_model), calib[:3], params, other)
    nemo_search.search(str(tiny_model), pool, indices[3:], other, params, tmp_path / "chunk_other.nc")
    with pytest.raises(InputError, match="chunk_other.nc: its threshold, calibration differ"):
        nemo_search.merge([chunks[0], tmp_path / "chunk_other.nc"], tmp_path / "bad.nc")
    assert not (tmp_path / "bad.nc").exists()
