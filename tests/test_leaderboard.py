"""The leaderboard: its columns from known stage files, the command, the stack, and the plan of every shipped
config (the loaded config's models, the files it reads, the configs results/leaderboard.csv stacks)."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from conftest import REPO

from memprune.errors import InputError

NAN = np.nan


def _eval(path: Path) -> None:
    variants, subsets = ["none", "pruned:wanda", "wen", "adversarial"], ["m/0", "m/1"]
    two = lambda *rows: (("variant", "subset"), np.array(rows, dtype=float))  # noqa: E731
    xr.Dataset(
        {"copy_rate": two([0.8, 0.6], [0.1, NAN], [0.4, 0.2], [0.0, 0.0]),
         "prompt_following": two([0.5, 0.7], [0.25, NAN], [0.6, 0.6], [0.3, 0.3]),
         "frechet_distance": two([2.0, 2.0], [4.0, NAN], [3.0, 3.0], [8.0, 8.0]),
         "seconds_per_image": two([1.0, 1.0], [1.0, NAN], [3.0, 3.0], [1.0, 1.0]),
         "mask_seconds": two([0.0, 0.0], [20.0, NAN], [0.0, 0.0], [0.0, 0.0]),
         "fraction_over": (("variant", "subset", "threshold"), np.stack([
             np.array([[0.9, 0.7], [0.1, NAN], [0.5, 0.3], [0.0, 0.0]]),
             np.array([[0.5, 0.5], [0.0, NAN], [0.2, 0.0], [0.0, 0.0]])], axis=-1))},
        coords={"variant": variants, "subset": subsets, "threshold": [0.5, 0.7]},
    ).to_netcdf(path, engine="h5netcdf")


def _attack(path: Path, variant: str, actual, other) -> None:
    prompts = np.array(["p0", "p1", "p2", "p3", "s0"], dtype=object)
    xr.Dataset({"actually_memorized": ("prompt", np.array(actual, bool)),
                "copies_another": ("prompt", np.array(other, bool))},
               coords={"prompt": prompts, "group": ("prompt", np.array(["mem"] * 4 + ["single"], dtype=object))},
               attrs={"variant": variant}).to_netcdf(path, engine="h5netcdf")


def _recovery(path: Path) -> None:
    rec = np.array([[[1, 1], [1, 0], [0, 0], [0, 0]],  # none: (target, init prompt/random)
                    [[0, 1], [0, 0], [0, 0], [1, 0]]], dtype=np.uint8)  # pruned:wanda|m/0
    xr.Dataset({"recovered": (("variant", "target", "init"), rec)},
               coords={"variant": ["none", "pruned:wanda|m/0"], "target": np.arange(4), "init": ["prompt", "random"],
                       "group": ("target", np.array(["mem", "mem", "single", "single"], dtype=object))},
               ).to_netcdf(path, engine="h5netcdf")


def _timing(path: Path) -> None:
    """Every model timed in one process (memprune.evaluate.timing): medians over rounds."""
    models = ["none", "pruned:wanda|m/0", "wen", "adversarial"]
    xr.Dataset({"seconds_per_image": ("model", [0.5, 0.5, 1.5, 0.55]),
                "overhead_seconds_per_image": ("model", [0.0, 0.01, 1.0, 0.05]),
                "time_per_image_vs_none": ("model", [1.0, 1.02, 3.0, 1.1])},
               coords={"model": models}).to_netcdf(path, engine="h5netcdf")


def _localization(path: Path) -> None:
    xr.Dataset({"precision": (("localizer", "collection", "subset"), np.array([[[0.8, 0.7]]])),
                "recall": (("localizer", "collection", "subset"), np.array([[[0.1, 0.2]]]))},
               coords={"localizer": ["wanda"], "collection": ["m"], "subset": [0, 1]}
               ).to_netcdf(path, engine="h5netcdf")


@pytest.fixture
def stages(tmp_path):
    (tmp_path / "mem.txt").write_text("p0\np1\np2\np3\n")
    _eval(tmp_path / "eval.nc")
    _attack(tmp_path / "none.nc", "none", [1, 1, 1, 0, 0], [0, 0, 0, 1, 0])
    _attack(tmp_path / "pruned.nc", "pruned:wanda|m/0", [1, 1, 0, 0, 0], [0, 0, 1, 0, 0])
    _recovery(tmp_path / "recovery.nc")
    _localization(tmp_path / "localization.nc")
    _timing(tmp_path / "timing.nc")
    (tmp_path / "adv.tsv").write_text("s\th:m:s\n30.0\t0:00:30\n")
    models = {"none": {"variant": "none", "method": None, "subset": None},
              "pruned:wanda|m/0": {"variant": "pruned", "method": "wanda", "subset": "m/0",
                                   "prompts_file": str(tmp_path / "mem.txt"), "indices": [0, 1], "edit_prompts": 2},
              "wen": {"variant": "wen", "method": None, "subset": None},
              "adversarial": {"variant": "adversarial", "method": None, "subset": None,
                              "edit_benchmark": str(tmp_path / "adv.tsv"), "edit_prompts": 3}}
    (tmp_path / "models.json").write_text(json.dumps(models))
    return tmp_path


def test_leaderboard_columns_from_known_stage_files(stages):
    from memprune.cli import main

    out, fig = stages / "leaderboard.csv", stages / "leaderboard.png"
    assert main(["leaderboard", "--models-json", str(stages / "models.json"), "--eval", str(stages / "eval.nc"),
                 "--eval-kind", "mem", "--attack", f"none={stages / 'none.nc'}",
                 f"pruned:wanda|m/0={stages / 'pruned.nc'}",
                 "--recovery", str(stages / "recovery.nc"), "--localization", str(stages / "localization.nc"),
                 "--timing", str(stages / "timing.nc"), "--out", str(out), "--figure", str(fig)]) == 0
    t = pd.read_csv(out).set_index("model")
    assert list(t.index) == ["none", "pruned:wanda|m/0", "wen", "adversarial"]
    assert list(t.columns[:4]) == ["variant", "localizer", "subset", "eval_kind"]
    # evaluation: a pruned model's own cell and ratios on its subset; a model without an edit: means over subsets
    assert t.loc["pruned:wanda|m/0", "eval_copies"] == 0.1 and t.loc["none", "eval_copies"] == pytest.approx(0.7)
    assert t.loc["pruned:wanda|m/0", "prompt_following_vs_none"] == 0.5
    assert t.loc["wen", "prompt_following_vs_none"] == pytest.approx(1.0) and t.loc["none", "frechet_vs_none"] == 1.0
    assert t.loc["adversarial", "frechet_vs_none"] == 4.0
    # time: from timing.nc (one process, one load), never from evaluation's per-job times (eval.nc: wen 3 s, none 1 s)
    assert t.loc["wen", "seconds_per_image"] == 1.5 and t.loc["wen", "overhead_seconds_per_image"] == 1.0
    assert t.loc["wen", "time_per_image_vs_none"] == 3.0 and t.loc["pruned:wanda|m/0", "time_per_image_vs_none"] == 1.02
    assert t.loc["none", "seconds_per_image"] == 0.5
    assert t.loc["none", "fraction_over_0.5"] == pytest.approx(0.8)
    assert t.loc["pruned:wanda|m/0", "fraction_over_0.7"] == 0.0
    # the attack: held-out prompts of each kind (the pruned model's subset p0, p1 left out)
    assert t.loc["none", "copies_mem"] == 0.75 and t.loc["none", "copies_another_mem"] == 0.25
    assert t.loc["pruned:wanda|m/0", "copies_mem"] == 0.0 and t.loc["pruned:wanda|m/0", "copies_another_mem"] == 0.5
    assert t.loc["pruned:wanda|m/0", "attack_prompts_mem"] == 2 and t.loc["none", "attack_prompts_mem"] == 4
    assert np.isnan(t.loc["wen", "copies_mem"])  # not attacked
    # recovery: MR per group and start, every target together
    assert t.loc["none", "mr_prompt_mem"] == 1.0 and t.loc["none", "mr_random_mem"] == 0.5
    assert t.loc["pruned:wanda|m/0", "mr_prompt_mem"] == 0.0 and t.loc["pruned:wanda|m/0", "mr_prompt_single"] == 0.5
    assert np.isnan(t.loc["wen", "mr_prompt_mem"])
    # localization of the edit's masks; cost per prompt the edit was made from
    assert t.loc["pruned:wanda|m/0", "precision"] == 0.8 and t.loc["pruned:wanda|m/0", "recall"] == 0.1
    assert np.isnan(t.loc["none", "precision"])
    assert t.loc["pruned:wanda|m/0", "locate_seconds_per_prompt"] == 10.0
    assert t.loc["adversarial", "locate_seconds_per_prompt"] == 10.0
    assert t.loc["none", "locate_seconds_per_prompt"] == 0.0 and t.loc["wen", "locate_seconds_per_prompt"] == 0.0
    assert fig.stat().st_size > 1000
    # intervals from the per-prompt data: the attack's prompts, recovery's targets (Wilson; paired differences from
    # the unedited model on the same prompts); this eval.nc holds summaries only, so it gives none
    assert t.loc["none", "copies_mem_lo"] < 0.75 < t.loc["none", "copies_mem_hi"]
    assert t.loc["none", "copies_mem_minus_none"] == 0 and not t.loc["none", "copies_mem_minus_none_excludes_zero"]
    assert t.loc["pruned:wanda|m/0", "copies_mem_minus_none"] == -0.5  # held-out p2, p3: 1 -> 0 and 0 -> 0
    assert t.loc["pruned:wanda|m/0", "mr_prompt_mem_lo"] == 0 and 0 < t.loc["pruned:wanda|m/0", "mr_prompt_mem_hi"] < 1
    assert t.loc["pruned:wanda|m/0", "mr_prompt_mem_minus_none"] == -1.0
    assert "eval_copies_lo" not in t and "Wilson" in t.loc["none", "interval_method"]
    cols = list(t.columns)
    assert cols[cols.index("copies_mem") + 1: cols.index("copies_mem") + 3] == ["copies_mem_lo", "copies_mem_hi"]


def _eval_per_prompt(path: Path) -> None:
    """eval.nc with its per-prompt data: 40 memorized prompts in two subsets of 20 (each model tested on the other
    half), 5 non-memorized, 3 seeds; the unedited model copies 60% of them, the edit of m/0 10%."""
    rng = np.random.default_rng(0)
    n_mem, n_non, n_s = 40, 5, 3
    groups = np.array(["memorized"] * n_mem + ["nonmemorized"] * n_non, dtype=object)
    in_test = np.ones((2, n_mem + n_non), bool)
    in_test[0, :20], in_test[1, 20:n_mem] = False, False
    copied = np.full((2, 2, n_mem + n_non), np.nan)
    none = (rng.random(n_mem) < 0.6).astype(float)
    copied[0][:, :n_mem] = np.where(in_test[:, :n_mem], none, np.nan)
    copied[1, 0, :n_mem] = np.where(in_test[0, :n_mem], none * (rng.random(n_mem) < 0.15), np.nan)
    sim = (np.where(np.isnan(copied), np.nan, 0.2 + 0.6 * np.nan_to_num(copied))[..., None]
           + rng.normal(0, 0.05, (2, 2, n_mem + n_non, n_s)))
    follows = np.full((2, 2, n_mem + n_non, n_s), np.nan)
    follows[:, :, n_mem:] = rng.random((2, 2, n_non, n_s)) < 0.7
    follows[1, 1] = np.nan  # the edit of m/0 has no model on m/1
    mem = groups == "memorized"
    def summary(a):  # (variant, subset, ...) -> each cell's mean, NaN for a cell without a model
        return np.array([[np.nanmean(c) if not np.isnan(c).all() else np.nan for c in row] for row in a])

    two = lambda a: (("variant", "subset"), a)  # noqa: E731
    xr.Dataset(
        {"copied": (("variant", "subset", "prompt"), copied),
         "copy_similarity": (("variant", "subset", "prompt", "seed"), sim),
         "follows_prompt": (("variant", "subset", "prompt", "seed"), follows),
         "in_test": (("subset", "prompt"), in_test),
         "copy_rate": two(summary(copied[:, :, mem])), "prompt_following": two(summary(follows)),
         "frechet_distance": two(np.ones((2, 2))), "mask_seconds": two(np.zeros((2, 2))),
         "frechet_distance_resampled": (("variant", "subset", "resample"),
                                        np.where(np.isnan(summary(copied))[..., None], np.nan,
                                                 rng.uniform(0.8, 1.2, (2, 2, 100))))},
        coords={"variant": ["none", "pruned:wanda"], "subset": ["m/0", "m/1"],
                "prompt": [f"p{i}" for i in range(n_mem + n_non)],
                "seed": np.arange(n_s), "group": ("prompt", groups)},
    ).to_netcdf(path, engine="h5netcdf")


def test_leaderboard_rows_carry_intervals_and_paired_differences_from_the_unedited_model(tmp_path):
    """With eval.nc's per-prompt data: every row has `eval_copies_lo` / `_hi` around its value, and its difference
    from the unedited model paired over the same prompts and seeds; the unedited model under a second id is 0 in
    [0, 0], not excluding zero; an edit that removes most copies excludes it; the figure draws the bars."""
    from memprune.evaluate.leaderboard import leaderboard, leaderboard_figure

    _eval_per_prompt(tmp_path / "eval.nc")
    models = {"none": {"variant": "none", "method": None, "subset": None},
              "none_again": {"variant": "none", "method": None, "subset": None},
              "pruned:wanda|m/0": {"variant": "pruned", "method": "wanda", "subset": "m/0",
                                   "subset_prompts": [f"p{i}" for i in range(20)], "edit_prompts": 20}}
    t = leaderboard(models, eval_nc=str(tmp_path / "eval.nc"), eval_kind="mem").set_index("model")
    for m in models:
        assert t.loc[m, "eval_copies_lo"] <= t.loc[m, "eval_copies"] < t.loc[m, "eval_copies_hi"]
        assert t.loc[m, "prompt_following_lo"] <= t.loc[m, "prompt_following"] <= t.loc[m, "prompt_following_hi"]
        assert 0.8 < t.loc[m, "frechet_distance_lo"] < t.loc[m, "frechet_distance"] < t.loc[m, "frechet_distance_hi"]
    for m in ("none", "none_again"):
        assert t.loc[m, ["eval_copies_minus_none", "eval_copies_minus_none_lo",
                         "eval_copies_minus_none_hi"]].tolist() == [0, 0, 0]
        assert t.loc[m, "eval_copies_minus_none_excludes_zero"] == False  # noqa: E712 (numpy's bool)
    edit = t.loc["pruned:wanda|m/0"]
    none_m0 = float(xr.open_dataset(tmp_path / "eval.nc", engine="h5netcdf")
                    .copy_rate.sel(variant="none", subset="m/0"))
    assert edit.eval_copies_minus_none == pytest.approx(edit.eval_copies - none_m0)
    assert edit.eval_copies_minus_none_lo < edit.eval_copies_minus_none < edit.eval_copies_minus_none_hi < 0
    assert edit.eval_copies_minus_none_excludes_zero == True  # noqa: E712
    assert "paired" in edit.interval_method
    cols = list(t.reset_index().columns)
    i = cols.index("eval_copies")
    assert cols[i + 1: i + 7] == ["eval_copies_lo", "eval_copies_hi", "eval_copies_minus_none",
                                  "eval_copies_minus_none_lo",
                                  "eval_copies_minus_none_hi", "eval_copies_minus_none_excludes_zero"]
    leaderboard_figure(t.reset_index(), tmp_path / "board.png")
    assert (tmp_path / "board.png").stat().st_size > 1000


def test_leaderboard_refuses_an_unknown_model_and_writes_nothing(stages):
    from memprune.cli import main

    out = stages / "bad.csv"
    assert main(["leaderboard", "--models-json", str(stages / "models.json"), "--attack", f"ghost={stages / 'none.nc'}",
                 "--out", str(out), "--figure", str(stages / "bad.png")]) == 2
    assert main(["leaderboard", "--models-json", '{"wen": {"variant": "wen"}}', "--out", str(out),
                 "--figure", str(stages / "bad.png")]) == 2
    assert not out.exists() and not (stages / "bad.png").exists()


def test_stack_adds_the_testbed_column(tmp_path):
    from memprune.cli import main

    for name, extra in (("a", {"copies_mem": [0.5, 0.0]}), ("b", {"copies_planted": [1.0, 0.1]})):
        (tmp_path / name).mkdir()
        pd.DataFrame({"model": ["none", "wen"], **extra}).to_csv(tmp_path / name / "leaderboard.csv", index=False)
    out = tmp_path / "all.csv"
    assert main(["leaderboard-stack", "--inputs", str(tmp_path / "a/leaderboard.csv"),
                 str(tmp_path / "b/leaderboard.csv"),
                 "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert list(t.columns) == ["testbed", "model", "copies_mem", "copies_planted"]
    assert t.testbed.tolist() == ["a", "a", "b", "b"] and np.isnan(t.copies_planted[0]) and t.copies_planted[2] == 1.0
    (tmp_path / "c.csv").write_text("x\n1\n")
    assert main(["leaderboard-stack", "--inputs", str(tmp_path / "c.csv"), "--out", str(tmp_path / "no.csv")]) == 2
    assert not (tmp_path / "no.csv").exists()


def _plan(name: str):
    from memprune.plan.compare import Adversarial, Attack, Evaluation, Recovery
    from memprune.plan.config import Plan
    from memprune.plan.leaderboard import Leaderboard
    from memprune.plan.schema import validate_config

    cfg = validate_config(yaml.safe_load((REPO / name).read_text()))
    plan = Plan(cfg, REPO)
    return Leaderboard(plan, Evaluation(plan), Attack(plan), Recovery(plan), Adversarial(plan))


def _stacking(board, configs):
    """The leaderboard of `board`'s config with `leaderboard.configs` set to `configs` (the stack is read once per
    leaderboard, so a new one)."""
    board.plan.config["leaderboard"] = {"configs": configs}
    return type(board)(board.plan, board.evaluation, board.attack, board.recovery, board.adversarial)


def test_default_config_lists_every_compared_model_and_stacks_every_testbed():
    board = _plan("config.yaml")
    models = json.loads(board.models_json())
    assert list(models)[0] == "none"
    assert {"wen", "ren", "jain", "pruned:wanda|plant_k10/0", "pruned:oracle|plant_k10/0",
            "pruned:nemo|plant_k10/0"} <= set(models)
    assert any(k.startswith("adversarial") for k in models)
    adv = next(v for k, v in models.items() if v["variant"] == "adversarial")
    assert adv["edit_benchmark"].startswith("benchmarks/testbed_planted/adversarial/") and adv["edit_prompts"] == 25
    wanda = models["pruned:wanda|plant_k10/0"]
    assert wanda["edit_prompts"] == 10 and len(wanda["indices"]) == 10 and wanda["prompts_file"].endswith("planted.txt")
    inputs = board.inputs()
    assert inputs["eval"] == "results/testbed_planted/eval.nc" and inputs["localization"].endswith("localization.nc")
    assert inputs["recovery"] == "results/testbed_planted/recovery.nc" and len(inputs["attack"]) == 7
    stacked = board.stacked()
    assert set(stacked) == {"testbed_planted", "testbed", "testbed_finetune", "testbed_finetune_e16",
                            "testbed_finetune_e32"}
    assert stacked["testbed_finetune_e32"] == ["config/testbed_finetune.yaml", "config/finetune/e32.yaml"]
    others = board.others()  # each other config as its own run loads it: the files overlaid, not yet validated
    assert set(others) == set(stacked) - {"testbed_planted"}
    assert others["testbed_finetune_e32"]["model"]["name"] == "testbed_finetune_e32"
    assert others["testbed_finetune_e32"]["testbed"]["derived"]["train"]["epochs"] == 32
    assert others["testbed_finetune_e32"]["testbed"]["derived"]["train"]["lr"] == 0.00006  # from the base file
    assert "leaderboard" not in others["testbed"] and "copy_threshold" not in others["testbed"]


def test_a_missing_or_clashing_stacked_config_is_named(tmp_path):
    from memprune.plan.leaderboard import rule_prefix

    board = _plan("config/testbed.yaml")
    assert board.stacked() == {"testbed": []} and board.others() == {}  # no configs listed: this model alone
    (tmp_path / "o.yaml").write_text("model: {name: testbed_other}\n")  # an overlay: the second file renames the model
    board = _stacking(board, ["config/testbed.yaml", ["config/testbed.yaml", str(tmp_path / "o.yaml")]])
    assert board.stacked() == {"testbed": ["config/testbed.yaml"],
                               "testbed_other": ["config/testbed.yaml", str(tmp_path / "o.yaml")]}
    assert list(board.others()) == ["testbed_other"]
    assert board.others()["testbed_other"]["model"] == {"name": "testbed_other", "path": "resources/testbed"}
    assert board.stacked_inputs() == ["results/testbed/leaderboard.csv", "results/testbed_other/leaderboard.csv"]
    assert rule_prefix("testbed_other") == "testbed_other__" and rule_prefix("tb-2.x") == "tb_2_x__"
    (tmp_path / "seed.yaml").write_text("model: {name: testbed_seed1}\ntestbed: {dataset: {seed: 1}}\n")
    (tmp_path / "dot.yaml").write_text("model: {name: testbed.v2}\n")
    (tmp_path / "under.yaml").write_text("model: {name: testbed_v2}\n")
    for configs, message in (([str(tmp_path / "gone.yaml")], "no such config file"),
                             (["config/testbed.yaml", "config/testbed.yaml"], "both run model 'testbed'"),
                             ([["config/testbed.yaml", str(tmp_path / "seed.yaml")]],
                              "sets testbed.dataset to {'seed': 1, .*results/testbed/"),
                             ([["config/testbed.yaml", str(tmp_path / n)] for n in ("dot.yaml", "under.yaml")],
                              "'testbed.v2' and 'testbed_v2' .* would share the rule names testbed_v2__")):
        with pytest.raises(InputError, match=message):
            _stacking(board, configs).stacked()


def _planned_jobs(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """{outputs: (rule, {field: value})} of every job a `snakemake -n -p` prints (its input, output, log, benchmark,
    wildcards, threads, resources and shell command; not its job id or reason), keyed by its output line."""
    jobs, rule, fields = {}, None, {}
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\S+):$", line):
            rule, fields = m.group(1), {}
        elif rule and line.startswith("Shell command: "):
            fields["shell"] = line.removeprefix("Shell command: ")
            assert fields["output"] not in jobs
            jobs[fields["output"]], rule = (rule, fields), None
        elif rule and (m := re.match(r"^    (\w+): (.*)$", line)) and m.group(1) not in ("jobid", "reason"):
            # resources in a set: their order follows where each was set (rule, profile), not what was asked
            value = m.group(2)
            fields[m.group(1)] = frozenset(value.split(", ")) if m.group(1) == "resources" else value
    return jobs


@pytest.mark.slow
def test_stacked_dry_run_plans_every_config_and_each_as_its_own_run(tmp_path):
    """`snakemake -n results/leaderboard.csv` on the default config plans every stacked testbed's jobs in one DAG;
    the shipped testbed's are those of its own run (`--configfile config/testbed.yaml`): the same outputs, inputs,
    logs, benchmarks, resources (a profile's per-rule ones too) and commands, under rule names testbed__<rule>; the
    dataset that every testbed reads is one job, of this config's rule."""
    import subprocess
    import sys

    from memprune.plan import lay_out_clone

    lay_out_clone(REPO, tmp_path)

    def dry_run(*args):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--profile",
                               str(REPO / "workflow/profiles/local"), *args],
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return _planned_jobs(proc.stdout)

    stack = dry_run("results/leaderboard.csv")
    own = dry_run("results/testbed/leaderboard.csv", "--configfile", "config/testbed.yaml")
    outputs = {path for key in stack for path in key.split(", ")}  # a job's outputs, the key of its entry
    assert {f"results/{n}/leaderboard.csv" for n in ("testbed_planted", "testbed", "testbed_finetune",
                                                     "testbed_finetune_e16", "testbed_finetune_e32")} <= outputs
    assert [rule for rule, _ in stack.values()].count("testbed_data") == 1
    assert not any(rule.endswith("__testbed_data") for rule, _ in stack.values())
    assert stack["results/leaderboard.csv"][0] == "leaderboard_stack"
    assert "mem_mb=16000" in stack["results/testbed/eval/steps50_g2.0/samples/none"][1]["resources"]  # the profile's
    shared = {"testbed_data"}
    for output, (rule, fields) in own.items():
        assert stack[output] == (rule if rule in shared else f"testbed__{rule}", fields), output
    assert {o for o, (rule, _) in stack.items() if rule.startswith("testbed__")} == {
        o for o, (rule, _) in own.items() if rule not in shared}


@pytest.mark.slow
def test_stacked_leaderboard_builds_every_config_in_one_dag(tiny_model, tmp_path):
    """`results/leaderboard.csv` on a tiny model under two configs, in one DAG: this config's leaderboard and the
    other's (the unedited model alone, so its DAG has no capture or masks: its rules, tiny_other__*, planned from
    its own config), both listed by the dry run before any job ran; both stacked, each with its evaluation and
    attack columns."""
    from conftest import snakemake, write_config
    from memprune.testbed.clip import ClipSpec, save_untrained_clip
    from PIL import Image

    mem = (REPO / "resources/prompts/testbed/duplicated.txt").read_text().splitlines()[:6]
    non = (REPO / "resources/prompts/testbed/heldout.txt").read_text().splitlines()[:2]
    clip = save_untrained_clip(tmp_path / "clip",
                               ClipSpec(vision_width=32, vision_layers=1, text_width=32, text_layers=1))
    rng = np.random.default_rng(0)
    for i in range(len(mem)):
        (tmp_path / "gt" / str(i)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "gt" / str(i) / "0.png")
    (tmp_path / "non.txt").write_text("".join(p + "\n" for p in non))
    stages = dict(
        evaluate={"variants": ["none", "pruned"], "max_subsets": 1, "seeds": [0, 1],
                  "nonmemorized": str(tmp_path / "non.txt"),
                  "ground_truth": str(tmp_path / "gt"), "fid_reference": "unedited", "clip": {"weights": str(clip)}},
        attack={"n_samples": 3, "steps": 2, "guidance": 2.0, "batch_size": 16, "chunk_size": 6},
        activations={"chunk_size": 6},
        leaderboard={"configs": [str(tmp_path / "config.yaml"), str(tmp_path / "other.yaml")]})
    collections = {"m3": {"set": "mem", "n_subsets": 2, "size": 3, "seed": 0}}
    write_config(tmp_path, tiny_model, {"mem": mem}, collections, **stages)
    other = yaml.safe_load((tmp_path / "config.yaml").read_text())
    other["model"]["name"] = "tiny_other"
    other["evaluate"]["variants"] = ["none"]
    other["attack"]["variants"] = ["none"]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    planned = {rule for rule, _ in _planned_jobs(snakemake(tmp_path, "-n", "-p", "results/leaderboard.csv").stdout)
               .values()}
    assert {"leaderboard", "tiny_other__leaderboard", "tiny_other__eval_sample", "tiny_other__attack_generate",
            "leaderboard_stack", "capture_chunk"} <= planned
    assert not any(r.startswith("tiny_other__") and r.endswith(("capture_chunk", "masks")) for r in planned)
    snakemake(tmp_path, "results/leaderboard.csv")
    assert not (tmp_path / "results/tiny_other/masks").exists()
    t = pd.read_csv(tmp_path / "results/leaderboard.csv")
    assert t.testbed.tolist() == ["tiny", "tiny", "tiny_other"]
    assert t.model.tolist() == ["none", "pruned:wanda|m3/0", "none"]
    assert {"eval_copies", "copies_mem", "prompt_following_vs_none", "locate_seconds_per_prompt"} <= set(t.columns)
    assert (t.attack_prompts_mem.tolist() == [6, 3, 6])  # the pruned model's own 3 prompts are left out
    assert (t.locate_seconds_per_prompt[t.model == "none"] == 0).all() and t.locate_seconds_per_prompt[1] > 0
    # the same model and config under two names: the same unedited row, but for the measured times and the
    # intervals: "tiny" measures it on its edit's held-out prompts (the fair split), "tiny_other" on every prompt
    intervals = [c for c in t.columns if c.endswith(("_lo", "_hi", "_excludes_zero"))]
    a, b = (t[(t.testbed == n) & (t.model == "none")].drop(
        columns=["testbed", "seconds_per_image", "overhead_seconds_per_image", "time_per_image_vs_none", "edit_seconds",
                 "locate_seconds_per_prompt", *intervals]).reset_index(drop=True) for n in ("tiny", "tiny_other"))
    pd.testing.assert_frame_equal(a, b)
    fair, every = (t[(t.testbed == n) & (t.model == "none")].iloc[0] for n in ("tiny", "tiny_other"))
    assert fair.eval_copies_hi - fair.eval_copies_lo > every.eval_copies_hi - every.eval_copies_lo  # fewer prompts
    assert (tmp_path / "logs/tiny_other/leaderboard/table.log").exists()  # its own jobs' logs, as in its own run
    assert (tmp_path / "results/tiny/figures/leaderboard.png").exists()
    assert (tmp_path / "results/tiny_other/figures/leaderboard.png").exists()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(tmp_path, "-n", "results/leaderboard.csv"))
    # its own run finds every job of its model done by the stack
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(
        tmp_path, "-n", "results/tiny_other/leaderboard.csv", "--configfile", str(tmp_path / "other.yaml")))


@pytest.mark.slow
def test_killed_while_writing_its_figure_leaves_no_figure_and_a_rerun_completes(stages):
    import sys

    from conftest import kill_while_running

    out, fig = stages / "leaderboard.csv", stages / "leaderboard.png"
    cmd = [sys.executable, "-m", "memprune", "leaderboard", "--models-json", str(stages / "models.json"),
           "--eval", str(stages / "eval.nc"), "--attack", f"none={stages / 'none.nc'}", "--recovery",
           str(stages / "recovery.nc"), "--out", str(out), "--figure", str(fig)]
    left = kill_while_running(cmd, fig)
    assert left and not fig.exists()
    import subprocess

    subprocess.run(cmd, check=True, capture_output=True)
    assert fig.stat().st_size > 1000 and pd.read_csv(out).model.tolist()[0] == "none"


def test_timing_warms_up_each_model_then_rotates_the_order_every_round():
    from memprune.evaluate.timing import interleaved_times

    calls = []
    times = interleaved_times(lambda name: calls.append(name) or float(len(calls)), ["a", "b", "c"], rounds=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [4.0, 9.0, 11.0], "b": [5.0, 7.0, 12.0], "c": [6.0, 8.0, 10.0]}
    calls.clear()
    assert interleaved_times(lambda name: calls.append(name) or 1.0, ["a", "b"], rounds=2, warm_up=False) == {
        "a": [1.0, 1.0], "b": [1.0, 1.0]}
    assert calls == ["a", "b", "b", "a"]


def test_timing_of_models_on_the_tiny_model(tiny_model):
    """Every model generates in one process: ratios to the unedited model, which is 1 against itself."""
    from memprune.evaluate.timing import time_models
    from memprune.sampling import SamplingConfig

    entries = {"none": {"variant": "none"}, "jain": {"variant": "jain", "params": {}}}
    ds = time_models(str(tiny_model), entries, ["a red square", "a blue circle"],
                     SamplingConfig(steps=2, guidance=2.0, batch_size=2), rounds=2, device="cpu")
    assert list(ds.model.values) == ["none", "jain"] and ds.round_seconds_per_image.shape == (2, 2)
    assert float(ds.time_per_image_vs_none.sel(model="none")) == 1.0
    assert float(ds.overhead_seconds_per_image.sel(model="none")) == 0.0
    assert (ds.seconds_per_image > 0).all()
    with pytest.raises(InputError, match="unedited model"):
        time_models(str(tiny_model), {"jain": {"variant": "jain"}}, ["a"], SamplingConfig(steps=1), device="cpu")
    with pytest.raises(InputError, match="edit checkpoint"):
        time_models(str(tiny_model), {"none": {"variant": "none"}, "p": {"variant": "pruned"}}, ["a"],
                    SamplingConfig(steps=1), device="cpu")


@pytest.mark.slow
def test_timing_killed_while_writing_leaves_nothing_and_a_rerun_completes(tiny_model, tmp_path):
    import subprocess
    import sys

    from conftest import kill_while_running

    (tmp_path / "p.txt").write_text("a red square\na blue circle\n")
    out = tmp_path / "timing.nc"
    cmd = [sys.executable, "-m", "memprune", "leaderboard-timing", "--model", str(tiny_model), "--models-json",
           '{"none": {"variant": "none"}, "ren": {"variant": "ren"}}', "--steps", "2", "--guidance", "2.0",
           "--batch-size", "2", "--device", "cpu", "--prompts-file", str(tmp_path / "p.txt"), "--prompts", "2",
           "--rounds", "2", "--out", str(out)]
    kill_while_running(cmd, out)
    subprocess.run(cmd, check=True, capture_output=True)
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert list(ds.model.values) == ["none", "ren"] and float(ds.time_per_image_vs_none.sel(model="none")) == 1.0


def test_figure_labels_nearby_points_once():
    from memprune.evaluate.leaderboard import _label_groups

    points = [(0.0, 0.0, 1), (1.0, 1.0, 2), (0.02, 0.0, 3), (0.5, 0.0, 4)]
    assert _label_groups(points) == [(0.0, 0.0, [1, 3]), (1.0, 1.0, [2]), (0.5, 0.0, [4])]
    assert _label_groups([]) == [] and _label_groups([(2.0, 3.0, 1)]) == [(2.0, 3.0, [1])]


def test_figure_labels_of_neighbouring_points_alternate_above_and_below():
    from memprune.evaluate.leaderboard import _alternate_offsets

    groups = [(0.0, 0.0, [1]), (0.05, 0.0, [2]), (1.0, 1.0, [3]), (0.1, 0.0, [4])]
    assert _alternate_offsets(groups) == [False, True, False, False]  # x order: 1, 2 (below), 4 (above again), 3
    assert _alternate_offsets([]) == []
