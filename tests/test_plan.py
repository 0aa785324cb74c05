"""The planning module on the shipped configs: every target the old planner (rules/common.smk before the
redesign) produced is still produced, with the counts it had (per-subset gather and mask jobs became one job per
(method, collection); eval/attack generation rules were merged across variants)."""

import json

import pytest
import yaml

from conftest import REPO

from memprune.plan.config import Plan
from memprune.errors import InputError
from memprune.plan.compare import Attack, Detection, Evaluation
from memprune.plan.subsets import draw_subsets


def load(name: str) -> dict:
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / name).read_text())
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))  # fills the schema's defaults
    return cfg


def capture_chunks(plan: Plan) -> set[str]:
    return {c for name in plan.collections for c in plan.collection_chunks(name)}


# (config, capture chunks, eval models, attack models x chunks per model, detection sets): the old planner's
# dry run of results/iou.nc + eval.nc + attack/table.csv + detection.nc on each shipped config
OLD = {
    "config/testbed.yaml": (12, 19, (5, 10), 3),  # + NeMo and its random control on 2 subsets, NeMo attacked,
    # adversarial, Ren and Jain
    "config/sd15.yaml": (116, 27, (6, 63), 2),  # + NeMo (10 subsets), random, random_nemo, adversarial, Ren, Jain;
    # NeMo, adversarial, Ren, Jain attacked
    "config/sd2.yaml": (66, 27, (6, 28), 2),
}


@pytest.mark.parametrize("name", sorted(OLD))
def test_shipped_configs_plan_what_the_old_planner_did(name):
    n_chunks, n_eval, (n_attack, per_model), n_det = OLD[name]
    cfg = load(name)
    plan = Plan(cfg, REPO)
    assert len(capture_chunks(plan)) == n_chunks
    for cname, spec in cfg["collections"].items():
        if "n_subsets" in spec:
            size = plan.sets[spec["set"]].size
            assert [list(s) for s in plan.collections[cname].subsets] == draw_subsets(
                size, spec["n_subsets"], spec["size"], spec.get("seed", 0))
    evaluation, attack, detection = Evaluation(plan), Attack(plan), Detection(plan)
    assert len(evaluation.models) == n_eval and evaluation.models[0].id == "none"
    assert len({m.path for m in evaluation.models}) == n_eval
    assert len(attack.models) == n_attack and all(len(attack.chunks(m)) == per_model for m in attack.models)
    assert len(detection.sets) == n_det
    per_model = [f"{plan.results}/{f}" for f in ("density.nc", "iou.nc", "figures/density.png", "figures/iou.png")]
    assert plan.results == f"results/{cfg['model']['name']}"
    assert plan.targets()[:6] == per_model + ["results/iou.nc", "results/density.nc"]  # the headline copies
    models = json.loads(evaluation.models_json())
    pruned = [v for v in models.values() if v["variant"] == "pruned" and v["method"] == "wanda"]
    assert len(pruned) == 10 and all(v["mask_costs"] for v in pruned)


def test_default_paths_keep_the_parameters_tag():
    plan = Plan(load("config/testbed.yaml"), REPO)
    wanda = plan.methods["wanda"]
    assert wanda.tag == "seed0_steps50_g2.0_paper_sp0.01_tau10"  # the old MASK_TAG, now under masks/wanda/
    assert plan.mask_store("wanda", "mem_k10", 3) == f"results/testbed/masks/wanda/{wanda.tag}/mem_k10/3.zarr"
    assert plan.pruned("wanda", "mem_k10", 3) == f"results/testbed/pruned/wanda/{wanda.tag}/mem_k10/3"


def test_closed_loop_plan_waits_for_detection():
    cfg = load("config/testbed_closed_loop.yaml")
    asked = []
    plan = Plan(cfg, REPO, resolve_detected=lambda name: asked.append(name) or [f"p{i}" for i in range(20)])
    assert plan.sets["detected"].detected and plan.sets["detected"].size == 20
    assert len(plan.collections["det_k10"].subsets) == 10 and not asked  # the subsets are drawn by size alone
    assert plan.chunk_prompts("detected", 0)[:2] == ["p0", "p1"] and asked == ["detected"]
    assert len(Evaluation(plan).models) == 22 and len(Attack(plan).models) == 3


def test_method_reference_and_unknown_names_are_refused():
    from memprune.errors import InputError

    cfg = load("config/testbed.yaml")
    with pytest.raises(InputError, match="localizers: unknown|unknown localizer"):
        Plan({**cfg, "localizers": {"wanda": {}, "nosuch": {}}}, REPO)
    with pytest.raises(InputError, match="evaluate.methods"):
        Evaluation(Plan({**cfg, "evaluate": {**cfg["evaluate"], "methods": ["nosuch"]}}, REPO))
    with pytest.raises(InputError, match="attack.pruned.mem_k10"):
        Attack(Plan({**cfg, "attack": {**cfg["attack"], "pruned": {"mem_k10": [99]}}}, REPO))


def test_optional_arguments_are_omitted_not_printed_as_none():
    plan = Plan(load("config/testbed.yaml"), REPO)
    evaluation = Evaluation(plan)
    for text in (evaluation.prompt_args(), evaluation.metric_args(), plan.sampling_args(), Detection(plan).args()):
        assert "None" not in text and "null" not in text


@pytest.mark.parametrize("name,group,collection,k", [("config.yaml", "planted", "plant_k10", 25),
                                                      ("config/testbed_finetune.yaml", "finetuned", "ft_k10", 100)])
def test_derived_testbed_configs_plan_their_own_data_and_targets(name, group, collection, k):
    plan = Plan(load(name), REPO)
    assert plan.derived["added"]["group"] == group and plan.is_testbed
    assert plan.data_dir == f"results/{plan.name}/data" and plan.report == f"results/{plan.name}/report.nc"
    assert plan.report not in plan.targets()  # a named target: rule all builds the analysis only
    assert (f"results/{plan.name}/localization.nc" in plan.targets()) == (group == "planted")
    evaluation, attack = Evaluation(plan), Attack(plan)
    assert evaluation.data == attack.data == plan.data_dir
    col = plan.collections[collection]
    assert plan.sets[col.set].size == k and len(col.subsets) == 10 and all(len(s) == 10 for s in col.subsets)
    assert {"memorized", col.set} <= set(attack.sets)  # both kinds of memorized prompts are attacked
    assert {m.collection for m in attack.models if m.collection} == {collection}
    cfg = load(name)
    cfg["model"]["name"] = "testbed"
    with pytest.raises(Exception, match="needs its own name"):
        Plan(cfg, REPO)


def test_recovery_folder_names_which_photos_it_attacks_in_which_order():
    """The same budget on other targets, or on the same photos in another order (another edit's subset first), is
    another folder: chunks of one never pass for the other's."""
    from memprune.plan.compare import Recovery

    def tag(**recovery):
        cfg = load("config.yaml")
        cfg["recovery"] = {**cfg["recovery"], **recovery}
        return Recovery(Plan(cfg, REPO)).tag

    base = tag()
    assert base == tag() and base.startswith("s50_lr0.1_b8_seed0_n40_new40_prompt+random_")
    others = [tag(pruned={"plant_k10": [1]}), tag(variants=["none", "adversarial"]), tag(targets=["planted"]),
              tag(controls=[]), tag(new_photos=0)]
    assert len({base, *others}) == 6


def test_recovery_plans_every_compared_model_on_testbeds_only():
    from memprune.plan.compare import Recovery

    rec = Recovery(Plan(load("config.yaml"), REPO))
    assert [m.id.split("|")[0] for m in rec.models] == ["none", "pruned:wanda", "pruned:oracle", "pruned:nemo",
                                                        "pruned:wanda_10", "wen", "ren", "jain", "adversarial"]
    assert rec.sets == ["planted", "memorized"] and rec.controls == ["single"]
    assert rec.targets()[0] == "results/testbed_planted/recovery.nc"
    assert all(rec.result(m).startswith(rec.dir) for m in rec.models) and len({rec.result(m) for m in rec.models}) == 9
    by_variant = {m.variant: m for m in rec.models if m.method is None}
    inference_time = ("wen", "ren", "jain")  # they reuse the unedited searches
    assert all(rec.searches_from(by_variant[v], 1) == [rec.chunk(by_variant["none"], 1)] for v in inference_time)
    assert all(rec.searches_from(m, 0) == [] for m in rec.models if m.variant not in inference_time)
    cfg = load("config.yaml")
    assert "--searches-per-call 16" in rec.args()
    one = Recovery(Plan({**cfg, "recovery": {**cfg["recovery"], "searches_per_call": 1}}, REPO))
    assert "--searches-per-call" not in one.args()  # 1, the default: the job's command as without the key
    assert one.tag == rec.tag  # the same searches, batched or not: the same folder
    alone = Recovery(Plan({**cfg, "recovery": {**cfg["recovery"], "variants": ["wen"]}}, REPO))
    assert alone.searches_from(alone.models[0], 0) == []  # no unedited model attacked: Wen runs its own searches
    sd = load("config/sd15.yaml")
    assert Recovery(Plan(sd, REPO)).enabled  # SD: the fetched training images of recovery.images
    assert not Recovery(Plan({**sd, "recovery": {**sd["recovery"], "images": {}}}, REPO)).enabled


def test_nemo_entries_name_calibration_sets_and_random_nemo_imitates_it():
    cfg = load("config.yaml")
    plan = Plan(cfg, REPO)
    assert plan.methods["nemo"].per_prompt and plan.methods["random_nemo"].localizer == "random"
    assert plan.methods["random_nemo"].reference == "nemo"
    assert plan.mask_inputs("nemo", "plant_k10") == {"layers": plan.layers_file,
                                                     "neurons": plan.neurons("nemo", "planted")}
    assert plan.neuron_prompts("planted") == sorted({i for s in plan.collections["plant_k10"].subsets for i in s})
    bad = {**cfg, "localizers": {**cfg["localizers"], "nemo": {"calibration": ["nope"]}}}
    with pytest.raises(InputError, match="localizers.nemo.calibration"):
        Plan(bad, REPO)


def test_max_subsets_mapping_names_known_localizers():
    cfg = load("config.yaml")
    bad = {**cfg, "evaluate": {**cfg["evaluate"], "max_subsets": {"wandaa": 2}}}
    with pytest.raises(InputError, match="evaluate.max_subsets"):
        Evaluation(Plan(bad, REPO))


def test_adversarial_is_trained_once_per_testbed_and_every_comparison_loads_it():
    from memprune.plan.compare import Adversarial, Recovery

    cfg = load("config.yaml")
    plan = Plan(cfg, REPO)
    adv = Adversarial(plan)
    assert adv.enabled and adv.sets == ["planted"] and adv.output.startswith("results/testbed_planted/adversarial/")
    for models in (Evaluation(plan).models, Recovery(plan).models):
        (m,) = [m for m in models if m.variant == "adversarial"]
        assert plan.checkpoint_of(m) == adv.output and m.method is None
    assert "--prompts-file resources/prompts/testbed_planted/planted.txt" in adv.args()
    assert "targets" not in json.loads(adv.spec_json()) and json.loads(adv.spec_json())["rounds"] == 3
    changed = Plan({**cfg, "adversarial": {**cfg["adversarial"], "rounds": 1}}, REPO)
    assert changed.trained_checkpoint() != adv.output  # another spec, another checkpoint
    off = {**cfg, **{k: {**cfg[k], "variants": ["none"]} for k in ("evaluate", "attack", "recovery")}}
    assert not Adversarial(Plan(off, REPO)).enabled
    sd = load("config/sd15.yaml")
    sd["evaluate"]["variants"], sd["recovery"]["images"] = ["none", "adversarial"], {}
    with pytest.raises(InputError, match="testbed"):
        Evaluation(Plan(sd, REPO))
