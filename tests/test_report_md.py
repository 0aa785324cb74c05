"""`memprune report`: docs/results.md from the result files. Small result files written by the pipeline's own writers
(or as they write them) for the planted config, none for the shipped testbed's: each section's table has the rows
and values of the files, with their intervals; the stamps name config, commit and files; the config without files
gets the commands that build them; the file is written atomically; the commands docs/outputs.md shows run."""

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import REPO, temporaries_of

PLANTED, SHIPPED = "testbed_planted", "testbed"  # config.yaml's model, config/testbed.yaml's
SEEDS = 4


def _mask_store(path, mask):
    """A subset's mask store (one layer, 5 steps) as `memprune locate` writes it."""
    from memprune.formats.masks import MaskSet, write_mask_set

    per_step = np.packbits(mask, axis=-1)
    write_mask_set(MaskSet(layers=["a"], kinds={"a": "weight"}, grid={"a": mask.shape[1:]},
                           union={"a": np.bitwise_or.reduce(per_step[:3], axis=0)}, per_step={"a": per_step},
                           steps=np.arange(5), t=np.arange(5)[::-1] * 100,
                           attrs={"n_prompts": 10, "params": {}, "model": "m", "base_unet_sha256": "x"}), path)
    return str(path)


def _analysis(out, tmp):
    """iou.nc and density.nc by the analysis job: wanda gives every planted subset the same mask (IOU 1)."""
    from memprune.analysis.density_iou import analyze

    rng = np.random.default_rng(0)
    same = rng.random((5, 6, 16)) < 0.2
    methods = {}
    for loc in ("wanda", "activation"):
        def masks(prefix, fixed=None):
            return [_mask_store(tmp / f"{loc}_{prefix}{i}.zarr", fixed if fixed is not None
                                else rng.random((5, 6, 16)) < 0.2) for i in range(3)]

        methods[loc] = {"plant_k10": {"control": False, "masks": masks("p", same if loc == "wanda" else None)},
                        "nonmem_k10": {"control": True, "masks": masks("n")}}
    analyze(methods, 0, out / "density.nc", out / "iou.nc", tmp / "density.png", tmp / "iou.png")


def _localization(path):
    """localization.nc as `memprune localization` writes it (its subset means and intervals by its own function)."""
    from memprune.localize.known_answer import with_subset_intervals

    three = ("localizer", "collection", "subset")
    prec = np.array([[[0.8, 0.7, 0.9], [0.2, 0.1, 0.15]]])
    ds = xr.Dataset({"precision": (three, prec), "recall": (three, prec / 10), "density": (three, prec * 0 + 0.01),
                     "recall_at": ((*three, "k"), np.repeat(prec[..., None], 3, -1)),
                     "random_precision": ((), 0.1), "random_recall_at": (("k",), [0.1, 0.2, 0.5])},
                    coords={"localizer": ["wanda"], "collection": ["plant_k10", "nonmem_k10"], "subset": [0, 1, 2],
                            "k": ["1r", "2r", "5r"]})
    with_subset_intervals(ds).to_netcdf(path, engine="h5netcdf")


def _report(path):
    """report.nc: 10 duplicated prompts all copied, 5 planted (added) 4 copied, 4 single-seen none, 6 held-out
    scenes, 4 of them followed; two guidance scales."""
    groups = ["duplicated"] * 10 + ["added"] * 5 + ["single"] * 4 + ["heldout"] * 6
    own = np.where(np.arange(25) < 14, 0.8, 0.1)  # the duplicated and the first 4 added prompts
    shape = (2, 25, SEEDS)
    follows = np.zeros(shape)
    follows[:, 19:23] = 1
    xr.Dataset({"ssim_own": (("guidance", "prompt", "seed"), np.broadcast_to(own[None, :, None], shape).copy()),
                "ssim_nearest": (("guidance", "prompt", "seed"), np.full(shape, 0.2)),
                "ssim_render": (("guidance", "prompt", "seed"), np.full(shape, 0.5)),
                "follows_prompt": (("guidance", "prompt", "seed"), follows)},
               coords={"guidance": [2.0, 4.0], "prompt": [f"q{i}" for i in range(25)], "seed": np.arange(SEEDS),
                       "group": ("prompt", np.array(groups, dtype=object))},
               attrs={"copy_threshold": 0.4, "steps": 50}).to_netcdf(path, engine="h5netcdf")


def _eval(out):
    """eval.nc (per-prompt data, summaries, then the intervals by `add_intervals`) and eval_summary.csv (by the
    aggregate's own table functions): 20 planted prompts, each subset's model tested on the other 10; the unedited
    model copies all but p0 and p10, the edit of plant_k10/0 only p11."""
    from memprune.evaluate.aggregate import TABLE_COLUMNS, fraction_over, summary_table
    from memprune.evaluate.eval_intervals import add_intervals, summary_intervals

    n_mem, n_non = 20, 10
    prompts = [f"p{i}" for i in range(n_mem)] + [f"n{i}" for i in range(n_non)]
    groups = np.array(["memorized"] * n_mem + ["nonmemorized"] * n_non, dtype=object)
    mem = groups == "memorized"
    in_test = np.ones((2, len(prompts)), bool)
    in_test[0, :10], in_test[1, 10:n_mem] = False, False
    copies = np.zeros((2, len(prompts)))
    copies[0, :n_mem] = 1
    copies[0, [0, 10]] = 0
    copies[1, 11] = 1
    sim = np.full((2, 2, len(prompts), SEEDS), np.nan)
    follows = np.full_like(sim, np.nan)
    for v in range(2):
        for s in range(2 - v):  # the edit has no model of plant_k10/1
            sim[v, s] = np.where(in_test[s][:, None], 0.1 + 0.7 * copies[v][:, None], np.nan)
            follows[v, s, ~mem] = (np.arange(n_non) < 7 - v)[:, None]
    copied = np.where(np.isnan(sim).all(-1), np.nan, (sim >= 0.4).mean(-1) > 0.5)
    copied[:, :, ~mem] = np.nan

    def cell_means(x):
        return np.array([[np.nanmean(c) if not np.isnan(c).all() else np.nan for c in row] for row in x])

    ds = xr.Dataset({"copy_similarity": (("variant", "subset", "prompt", "seed"), sim),
                     "clip_score": (("variant", "subset", "prompt", "seed"), np.where(np.isnan(sim), np.nan, 0.3)),
                     "follows_prompt": (("variant", "subset", "prompt", "seed"), follows),
                     "copied": (("variant", "subset", "prompt"), copied),
                     "in_test": (("subset", "prompt"), in_test)},
                    coords={"variant": ["none", "pruned:wanda"], "subset": ["plant_k10/0", "plant_k10/1"],
                            "prompt": prompts, "seed": np.arange(SEEDS), "group": ("prompt", groups)},
                    attrs={"copy_metric": "ssim", "copy_threshold": 0.4, "copy_checkpoint": ""})
    summaries = {"copy_rate": cell_means(copied[:, :, mem]), "prompt_following": cell_means(follows),
                 "mean_copy_similarity": cell_means(sim[:, :, mem]), "clip_score_memorized": cell_means(sim) * 0 + 0.3,
                 "frechet_distance": np.array([[3.0, 3.2], [4.5, np.nan]])}
    for name in TABLE_COLUMNS:
        value = summaries.get(name, np.where(np.isnan(summaries["copy_rate"]), np.nan, 1.0))
        ds[name] = (("variant", "subset"), value)
    ds["fraction_over"] = (("variant", "subset", "threshold"), fraction_over(sim, mem, [0.5]))
    ds = add_intervals(ds.assign_coords(threshold=[0.5]))
    ds.to_netcdf(out / "eval.nc", engine="h5netcdf")
    table = summary_table(ds)
    table["fraction_over_0.5"] = [float(np.nanmean(ds.fraction_over.sel(threshold=0.5, variant=r.variant).values))
                                  if r.subset in ("all", "mean")
                                  else float(ds.fraction_over.sel(threshold=0.5, variant=r.variant, subset=r.subset))
                                  for r in table.itertuples()]
    summary_intervals(ds, table).to_csv(out / "eval_summary.csv", index=False, float_format="%.4f")


ATTACK_PROMPTS = [f"p{i}" for i in range(20)] + [f"s{i}" for i in range(5)]


def _attack(out):
    """Per attacked model, its attack file (the analysed cliques), and attack/table.csv by `attack_table`: the
    unedited model's cliques are the own photo for p0..p15, another photo for s0; the edit's for p10 (own) and
    p11..p15 (another)."""
    from memprune.attacks.extraction import attack_table

    (out / "attack").mkdir()
    group = np.array(["planted"] * 20 + ["single"] * 5, dtype=object)
    files = {}
    for model, own, other in (("none", range(16), [20]), ("pruned:wanda|plant_k10/0", [10], range(11, 16))):
        actual, another = np.zeros(25, bool), np.zeros(25, bool)
        actual[list(own)], another[list(other)] = True, True
        path = out / "attack" / ("none.nc" if model == "none" else "pruned.nc")
        xr.Dataset({"identified": ("prompt", actual | another), "actually_memorized": ("prompt", actual),
                    "copies_another": ("prompt", another), "has_truth": ("prompt", np.ones(25, bool))},
                   coords={"prompt": np.array(ATTACK_PROMPTS, dtype=object), "group": ("prompt", group)},
                   attrs={"variant": model, "copy_metric": "ssim", "copy_threshold": 0.4, "copy_checkpoint": ""}
                   ).to_netcdf(path, engine="h5netcdf")
        files[model] = str(path)
    attack_table([Path(p) for p in files.values()]).to_csv(out / "attack" / "table.csv", index=False)
    return files


def _recovery(out, tmp):
    """Per model, the recovery job's file; recovery.nc and recovery.csv by `memprune recovery-table`'s summary:
    5 planted targets (the edit's subset: the first 2) and 3 single-seen ones, from the prompt and random starts."""
    from memprune.attacks.recovery_report import summary
    from memprune.formats.store import write_netcdf

    recovered = {"none": ([1, 1, 1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]),
                 "pruned:wanda|plant_k10/0": ([0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0])}
    paths = []
    for model, (prompt, random) in recovered.items():
        rec = np.array([prompt, random], dtype=np.uint8).T  # (target, init)
        split = ["all"] * 8 if model == "none" else ["subset"] * 2 + ["heldout"] * 3 + ["all"] * 3
        ds = xr.Dataset({"recovered": (("target", "init"), rec), "copied_original": (("target", "init"), rec * 0),
                         "ssim_original": (("target", "init", "seed"), np.full((8, 2, 2), 0.2)),
                         "ssim_recovered": (("target", "init", "seed"), np.repeat(rec[..., None], 2, -1) * 0.5),
                         "seconds": (("target", "init"), np.ones((8, 2))),
                         "split": ("target", np.array(split, dtype=object))},
                        coords={"target": np.arange(8), "init": ["prompt", "random"], "seed": [0, 1],
                                "prompt": ("target", np.array([f"p{i}" for i in range(5)] + ["s0", "s1", "s2"],
                                                              dtype=object)),
                                "group": ("target", np.array(["planted"] * 5 + ["single"] * 3, dtype=object))},
                        attrs={"variant": model, "copy_metric": "ssim", "copy_threshold": 0.4, "copy_checkpoint": ""})
        paths.append(tmp / f"recovery_{len(paths)}.nc")
        ds.to_netcdf(paths[-1], engine="h5netcdf")
    ds, rows = summary(paths)
    write_netcdf(ds, out / "recovery.nc")
    pd.DataFrame(rows).to_csv(out / "recovery.csv", index=False)


def _timing(path):
    xr.Dataset({"seconds_per_image": ("model", [0.50, 0.52]), "overhead_seconds_per_image": ("model", [0.0, 0.02]),
                "time_per_image_vs_none": ("model", [1.0, 1.04])},
               coords={"model": ["none", "pruned:wanda|plant_k10/0"]}).to_netcdf(path, engine="h5netcdf")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """results/ of a run of the planted config (every stage, the leaderboard by `memprune leaderboard`'s
    functions); nothing for the shipped testbed's config."""
    from memprune.evaluate.leaderboard import leaderboard, write_table

    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "results" / PLANTED
    out.mkdir(parents=True)
    _analysis(out, tmp)
    _localization(out / "localization.nc")
    _report(out / "report.nc")
    _eval(out)
    attack = _attack(out)
    _recovery(out, tmp)
    _timing(out / "timing.nc")
    (tmp / "adv.tsv").write_text("s\tcpu_time\n30.0\t25.0\n")
    models = {"none": {"variant": "none", "method": None, "subset": None},
              "pruned:wanda|plant_k10/0": {"variant": "pruned", "method": "wanda", "subset": "plant_k10/0",
                                           "subset_prompts": [f"p{i}" for i in range(10)], "edit_prompts": 10}}
    board = leaderboard(models, eval_nc=str(out / "eval.nc"), attack=attack, recovery_nc=str(out / "recovery.nc"),
                        localization_nc=str(out / "localization.nc"), eval_kind="planted",
                        timing_nc=str(out / "timing.nc"))
    write_table(board, out / "leaderboard.csv")
    return tmp / "results"


GROUPS = [["config.yaml"], ["config/testbed.yaml"]]


def _render(results, groups=GROUPS):
    from memprune.report_md.document import render

    return render(groups, results)


def _section(text: str, number: int, model: str) -> str:
    """The text of one config's part of section `number`."""
    part = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, flags=re.S | re.M).group(0)
    return re.search(rf"^### {model} \(.*?(?=^### |\Z)", part, flags=re.S | re.M).group(0)


def _table(text: str, after: str) -> list[dict]:
    """The first Markdown table after the line containing `after`, as rows {header: cell}."""
    lines = text[text.index(after):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return [dict(zip(rows[0], r)) for r in rows[2:]]


def _csv(path) -> dict:
    return pd.read_csv(path).set_index("model").to_dict("index")


def _ci(v, lo, hi) -> str:
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def test_each_section_gives_each_table_the_files_values_with_their_intervals(results):
    text = _render(results)
    head = text.split("\n## ")[0]
    assert "config.yaml" in head and "config/testbed.yaml" in head
    # 1. IOU (wanda: the same mask in every planted subset), density, localization, what the testbed memorizes
    one = _section(text, 1, PLANTED)
    iou = {r["localizer"]: r for r in _table(one, "iou.nc")}
    assert set(iou) == {"wanda", "activation"} and iou["wanda"]["plant_k10 (memorized)"] == "1.00"
    ds = xr.load_dataset(results / PLANTED / "iou.nc", engine="h5netcdf")
    control = float(ds.mean_iou.sel(localizer="activation", collection="nonmem_k10", mask_type="found").mean())
    assert iou["activation"]["nonmem_k10 (control)"] == f"{control:.2f}" and 0 < control < 0.5
    assert float(iou["wanda"]["plant_k10: random"]) < 0.5
    density = {r["localizer"]: r for r in _table(one, "density.nc")}
    assert re.fullmatch(r"\d+\.\d\d%", density["wanda"]["plant_k10 (memorized): per step"])
    loc = _table(one, "localization.nc")
    from memprune.evaluate.intervals import t_mean

    assert loc[0] == {"localizer": "wanda", "collection": "plant_k10 (memorized)",
                      "precision": _ci(*t_mean([0.8, 0.7, 0.9])), "recall": _ci(*t_mean([0.08, 0.07, 0.09]))}
    assert loc[1]["collection"] == "nonmem_k10 (control)" and loc[-1]["precision"] == "0.10"
    report = _table(one, "report.nc")
    assert [r["guidance"] for r in report] == ["2", "4"]
    assert report[0]["duplicated prompts copied"] == "1.00 [0.72, 1.00]"  # Wilson, 10 of 10
    assert report[0]["planted prompts copied"] == "0.80 [0.38, 0.96]"  # 4 of 5
    assert report[0]["single-seen: copy a training photo"].startswith("0.00 [0.00, ")
    assert report[0]["prompt following (held-out scenes)"].startswith("0.67 [")
    # 2. the leaderboard's evaluation columns, with intervals and the paired difference (bold: excludes 0)
    board = _csv(results / PLANTED / "leaderboard.csv")
    two = {r["model"]: r for r in _table(_section(text, 2, PLANTED), "leaderboard.csv")}
    assert list(two) == ["unedited", "wanda, plant_k10/0"]
    edit, b = two["wanda, plant_k10/0"], board["pruned:wanda|plant_k10/0"]
    assert edit["copies (planted)"] == _ci(b["eval_copies"], b["eval_copies_lo"], b["eval_copies_hi"])
    assert edit["copies (planted)"].startswith("0.10 [")
    assert edit["minus unedited"] == f"**{b['eval_copies_minus_none']:+.2f} [{b['eval_copies_minus_none_lo']:+.2f}, " \
                                     f"{b['eval_copies_minus_none_hi']:+.2f}]**" and b["eval_copies_minus_none"] < 0
    assert two["unedited"]["minus unedited"] == "+0.00 [+0.00, +0.00]"  # not bold: [0, 0] does not exclude 0
    assert edit["images >= 0.5"].startswith("0.10")
    assert edit["prompt following"].startswith("0.60 [") and edit["prompt following vs unedited"] == \
        f"{b['prompt_following_vs_none']:.2f}"
    assert edit["Frechet distance"] == "4.50" and edit["Frechet vs unedited"] == "1.50"
    assert "copies: ssim >= 0.4" in _section(text, 2, PLANTED)
    # 3. the attack (held-out prompts of each kind) and recovery, with the paired differences
    three = _section(text, 3, PLANTED)
    attack = {(r["model"], r["kind"]): r for r in _table(three, "the extraction attack")}
    assert attack[("unedited", "planted")]["prompts"] == "20" and attack[("unedited", "planted")]["own image"] \
        .startswith("0.80 [")
    held = attack[("wanda, plant_k10/0", "planted")]
    assert held["prompts"] == "10" and held["own image"].startswith("0.10 [")
    assert held["another image"].startswith("0.50")
    assert held["minus unedited"].startswith("**-0.50 [")  # p10..p15 own unedited, only p10 after the edit
    assert attack[("unedited", "single")]["another image"].startswith("0.20 [")
    mr = {(r["model"], r["group"]): r for r in _table(three, "the recovery attack")}
    assert mr[("unedited", "planted")]["MR from prompt"].startswith("0.80 [")
    assert mr[("wanda, plant_k10/0", "planted")]["MR from random"].startswith("0.20 [")
    assert mr[("wanda, plant_k10/0", "planted")]["MR from prompt minus unedited"] == "**-0.60 [-1.00, -0.20]**"
    # 4. time and locate columns
    four = {r["model"]: r for r in _table(_section(text, 4, PLANTED), "leaderboard.csv")}
    edit = four["wanda, plant_k10/0"]
    assert edit["time per image vs unedited"] == "1.04" and edit["s per image"] == "0.52"
    assert edit["locate s in all"] == "1.0" and edit["locate s per prompt"] == "0.1"
    assert four["unedited"]["locate s per prompt"] == "0.0"


def test_without_the_leaderboard_the_stage_tables_are_read(results, tmp_path):
    import shutil

    partial = tmp_path / "results"
    shutil.copytree(results, partial)
    (partial / PLANTED / "leaderboard.csv").unlink()
    text = _render(partial)
    two = {r["model"]: r for r in _table(_section(text, 2, PLANTED), "eval_summary.csv")}
    assert list(two) == ["unedited", "wanda, mean over subsets", "wanda, plant_k10/0"]
    summary = pd.read_csv(partial / PLANTED / "eval_summary.csv").iloc[2]
    assert two["wanda, plant_k10/0"]["copies"] == _ci(summary.copy_rate, summary.copy_rate_lo, summary.copy_rate_hi)
    assert two["wanda, plant_k10/0"]["minus unedited"].startswith("**-0.80 [")  # excludes 0, computed from its ends
    three = _section(text, 3, PLANTED)
    attack = {(r["model"], r["kind"]): r for r in _table(three, "attack/table.csv")}
    assert attack[("wanda, plant_k10/0", "planted")]["own image"].startswith("0.05 [")  # every prompt: 1 of 20
    rec = {(r["model"], r["group"], r["split"]): r for r in _table(three, "recovery.csv")}
    assert rec[("wanda, plant_k10/0", "planted", "subset")]["MR from prompt"].startswith("0.50 [")
    assert rec[("unedited", "planted", "all")]["targets"] == "5"
    assert "Time per image and the cost of each edit: not built" in _section(text, 4, PLANTED)


def test_a_config_without_files_gets_the_commands_that_build_them(results):
    text = _render(results)
    tail = "--configfile config/testbed.yaml` builds it."
    assert f"`snakemake --cores 2 results/{SHIPPED}/iou.nc {tail}" in _section(text, 1, SHIPPED)
    assert f"`snakemake --cores 2 results/{SHIPPED}/report.nc {tail}" in _section(text, 1, SHIPPED)
    assert "localization.nc" not in _section(text, 1, SHIPPED)  # no planted units: nothing to build
    for number in (2, 3, 4):
        assert f"`snakemake --cores 2 results/{SHIPPED}/leaderboard.csv {tail}" in _section(text, number, SHIPPED)
    assert "|" not in _section(text, 2, SHIPPED)  # no table


def test_each_table_is_stamped_once_with_config_commit_and_files(results, tmp_path):
    """The commit of the checkout the results were made in, "+ uncommitted changes" when a tracked file differs
    (the report's own output does not count); no commit in the text but the stamp's."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "tracked.txt").write_text("a\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/results.md").write_text("old\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import shutil

    shutil.copytree(results, tmp_path / "results")
    from memprune.report_md.document import render

    (tmp_path / "docs/results.md").write_text("changed by an earlier report\n")
    (tmp_path / "untracked.txt").write_text("x\n")
    text = render(GROUPS, tmp_path / "results", tmp_path / "docs/results.md")
    stamps = [line for line in text.splitlines() if line.startswith("Config ")]
    tables = [i for i, line in enumerate(text.splitlines()) if line.startswith("|---")]
    assert len(stamps) == len(tables) == 8  # iou, density, localization, report; eval; attack, MR; time
    for line in stamps:
        assert line.startswith(f"Config `config.yaml` (model `{PLANTED}`), commit {head}; read from `")
        assert "uncommitted" not in line and str(tmp_path / "results" / PLANTED) in line
    assert f"commit {head}." in text.split("\n## ")[0]
    (tmp_path / "tracked.txt").write_text("b\n")
    assert f"commit {head} + uncommitted changes; read from" in render(GROUPS, tmp_path / "results")


def test_written_atomically_an_error_leaves_the_previous_file(results, tmp_path, monkeypatch):
    from memprune.cli import main
    from memprune.report_md import subspace

    out = tmp_path / "results.md"
    argv = ["report", "--configfile", "config.yaml", "--configfile", "config/testbed.yaml", "--results", str(results),
            "--out", str(out)]
    assert main(argv) == 0
    first = out.read_text()
    assert first.startswith("# Measured results\n") and temporaries_of(out) == []

    def fail(*_):
        raise RuntimeError("a reader failed half-way")

    monkeypatch.setattr(subspace, "iou_table", fail)
    with pytest.raises(RuntimeError):
        main(argv)
    assert out.read_text() == first and temporaries_of(out) == []
    monkeypatch.undo()

    from memprune.formats import store

    def partial_write(self, text, encoding=None):  # the disk fills half-way through the write
        with open(self, "w") as f:
            f.write(text[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.Path, "write_text", partial_write)
    with pytest.raises(OSError):
        main(argv)
    assert out.read_text() == first and temporaries_of(out) == []


def test_the_cost_of_the_dag_is_summed_from_the_jobs_benchmark_records(results, tmp_path, monkeypatch):
    """Where the jobs left benchmark records, section 4 sums them per rule with benchmarks/dag_cost.py's functions,
    over the jobs that build the files the report read (the plan itself: `dag_jobs`, stubbed here)."""
    import shutil

    from benchmarks import dag_cost

    shutil.copytree(results, tmp_path / "results")
    bench = tmp_path / "benchmarks" / PLANTED
    bench.mkdir(parents=True)
    for name, wall, cpu in (("analysis", 100.0, 180.0), ("masks_0", 50.0, 40.0), ("masks_1", 70.0, 60.0)):
        (bench / f"{name}.tsv").write_text(f"s\th:m:s\tcpu_time\n{wall}\t0:01:00\t{cpu}\n")
    planned = []

    def dag_jobs(args, cwd=None):
        planned.append((args, cwd))
        return [("analysis", f"benchmarks/{PLANTED}/analysis.tsv"), ("masks", f"benchmarks/{PLANTED}/masks_0.tsv"),
                ("masks", f"benchmarks/{PLANTED}/masks_1.tsv"), ("latest_analysis", None)]

    monkeypatch.setattr(dag_cost, "dag_jobs", dag_jobs)
    text = _render(tmp_path / "results")
    four = _section(text, 4, PLANTED)
    rules = {r["rule"]: r for r in _table(four, "benchmark records")}
    assert rules["analysis"] == {"rule": "analysis", "jobs": "1", "with a record": "1", "CPU s": "180", "wall s": "100"}
    assert rules["masks"]["CPU s"] == "100" and rules["latest_analysis"]["with a record"] == "0"
    assert rules["total"] == {"rule": "total", "jobs": "4", "with a record": "3", "CPU s": "280", "wall s": "220"}
    assert "At least 2.3 min on 2 cores" in four and "latest_analysis 1" in four  # 280 CPU-s / 2 cores
    (args, cwd), = planned  # one plan, of the planted config only: the shipped one has no records
    assert cwd == tmp_path and args[:7] == [f"results/{PLANTED}/{f}" for f in (
        "iou.nc", "localization.nc", "report.nc", "leaderboard.csv", "eval_summary.csv", "attack/table.csv",
        "recovery.csv")]
    assert args[-2:] == ["--configfile", str(REPO / "config.yaml")] and "-s" in args  # no Snakefile in tmp_path


def test_two_configs_running_one_model_are_refused(results):
    from memprune.errors import InputError

    with pytest.raises(InputError, match="both run model 'testbed_planted'"):
        _render(results, [["config.yaml"], ["config.yaml", "config.yaml"]])


def _docs_commands() -> list[str]:
    """The `memprune report` lines of docs/outputs.md's bash blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs/outputs.md").read_text(), flags=re.S)
    lines = [line.strip() for b in blocks for line in re.sub(r"\\\n\s*", " ", b).splitlines()]
    return [line for line in lines if line.startswith("memprune report")]


def test_the_docs_commands_write_the_report(results, tmp_path, monkeypatch, capsys):
    """docs/outputs.md's commands from a directory laid out as a clone, with the planted config's results."""
    import shutil

    from memprune.cli import build_parser, main
    from memprune.plan import lay_out_clone

    commands = _docs_commands()
    assert commands and commands[0] == "memprune report --out docs/results.md"
    lay_out_clone(REPO, tmp_path)
    (tmp_path / "docs").mkdir()
    shutil.copytree(results, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    for line in commands:
        argv = shlex.split(line)
        assert main(argv[1:]) == 0, line
        out = tmp_path / argv[argv.index("--out") + 1]
        text = out.read_text()
        groups = build_parser().parse_args(argv[1:]).configfile
        if groups is None:  # the default: config.yaml and its leaderboard.configs
            for name in (PLANTED, SHIPPED, "testbed_finetune", "testbed_finetune_e16", "testbed_finetune_e32"):
                assert f"### {name} (" in text
            assert "| wanda, plant_k10/0 |" in text
        else:
            assert text.count("\n### ") == 4 * len(groups)


@pytest.mark.slow
def test_the_report_of_the_tiny_workflow_run(workflow_run, tmp_path):
    """The report of a real DAG run (results/iou.nc of the tiny model): its IOU and density tables, the cost of the
    jobs from their benchmark records, and the commands for the rest, which plan."""
    import sys

    from memprune.cli import main

    out = tmp_path / "results.md"
    config = str(workflow_run / "config.yaml")
    assert main(["report", "--configfile", config, "--results", str(workflow_run / "results"), "--out", str(out)]) == 0
    text = out.read_text()
    one = _section(text, 1, "tiny")
    ds = xr.load_dataset(workflow_run / "results/tiny/iou.nc", engine="h5netcdf")
    iou = {r["localizer"]: r for r in _table(one, "iou.nc")}
    assert set(iou) == {str(m) for m in ds.localizer.values}
    first = str(ds.localizer.values[0])
    value = float(ds.mean_iou.sel(localizer=first, collection="m5", mask_type="found").mean())
    assert iou[first]["m5 (memorized)"] == (f"{value:.2f}" if value >= 0.01 else f"{value:.3f}")
    assert _table(one, "density.nc")
    cost = _section(text, 4, "tiny")
    rules = {r["rule"]: r for r in _table(cost, "benchmark records")}
    assert {"capture_chunk", "masks", "analysis"} <= set(rules) and int(rules["total"]["with a record"]) > 0
    assert "At least" in cost
    commands = sorted(set(re.findall(r"`(snakemake --cores 2 [^`]*)`", text)))
    assert commands and all(c.endswith(f"--configfile {config}") for c in commands)
    targets = [w for c in commands for w in shlex.split(c)[3:-2]]
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), *targets,
                          "--configfile", config], cwd=workflow_run, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-3000:]


def test_a_config_whose_results_are_not_here_keeps_its_subsections_from_the_earlier_report(results, tmp_path):
    """`memprune report --keep-absent`: a config run elsewhere (its results folder absent here) keeps its subsections
    from the report written before, as they were; one whose folder is here is rewritten from its files."""
    from memprune.cli import main

    out = tmp_path / "results.md"
    assert main(["report", "--configfile", "config.yaml", "--configfile", "config/testbed.yaml",
                 "--results", str(results), "--out", str(out)]) == 0
    earlier = out.read_text()
    assert "| wanda, plant_k10/0 |" in earlier
    elsewhere = tmp_path / "elsewhere" / "results"
    (elsewhere / SHIPPED).mkdir(parents=True)  # the shipped testbed's folder here, the planted one's not
    args = ["report", "--configfile", "config.yaml", "--configfile", "config/testbed.yaml", "--results", str(elsewhere),
            "--out", str(out)]
    assert main([*args, "--keep-absent"]) == 0
    kept = out.read_text()
    for number in (1, 2, 3, 4):
        assert _section(kept, number, PLANTED) == _section(earlier, number, PLANTED)
    assert f"The subsections of `{PLANTED}` are kept from the report written before" in kept.split("\n## ")[0]
    assert main(args) == 0  # without the switch: every config from the files here
    assert "| wanda, plant_k10/0 |" not in out.read_text() and "not built" in _section(out.read_text(), 1, PLANTED)
