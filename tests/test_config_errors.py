"""Config errors name the fix: an unknown key, localizer or variant is named with the known ones (and the
closest, when one is close), a wrong value names its key, instead of the schema's `oneOf` dump."""

import copy

import pytest

from memprune.errors import InputError
from memprune.plan.schema import validate_config

BASE = {"model": {"name": "m", "path": "resources/testbed"},
        "prompt_sets": {"memorized": "resources/prompts/testbed/duplicated.txt"},
        "collections": {"mem": {"set": "memorized", "n_subsets": 2, "size": 5}}}

def known_localizers() -> str:
    from memprune import localize

    return ", ".join(localize.names())  # e.g. activation, magnitude, nemo, oracle, random, wanda


def error_of(**sections) -> str:
    cfg = {**copy.deepcopy(BASE), **sections}
    with pytest.raises(InputError) as err:
        validate_config(cfg)
    return str(err.value)


def test_unknown_localizer_names_the_known_ones():
    message = error_of(localizers={"wandaa": {}})
    assert message.startswith("config key localizers.wandaa: unknown localizer 'wandaa' (did you mean 'wanda'?); "
                              f"known: {known_localizers()}")
    assert "localizer: random" in message  # how an entry of another name says what it runs
    assert "oneOf" not in message and "is not valid under any" not in message


def test_unknown_implementation_of_an_entry_of_another_name():
    message = error_of(localizers={"wanda": {}, "n2": {"localizer": "nemoo"}})
    assert message == ("config key localizers.n2.localizer: unknown localizer 'nemoo' (did you mean 'nemo'?); "
                       f"known: {known_localizers()}")
    assert "needs like" in error_of(localizers={"wanda": {}, "r2": {"localizer": "random"}})
    assert error_of(localizers={"wanda": {"localizer": "nemo"}}).startswith(
        "config key localizers.wanda.localizer: wanda is a localizer's own name")
    # any registered localizer runs under another name, at its own parameters
    cfg = validate_config({**copy.deepcopy(BASE), "localizers": {"wanda": {}, "n2": {"localizer": "nemo", "theta": 3}}})
    assert cfg["localizers"]["n2"] == {"localizer": "nemo", "theta": 3}
    assert error_of(localizers={"n2": {"localizer": "nemo", "theta": "x"}}) == (
        "config key localizers.n2.theta: 'x' is not of type 'number'")


def test_unknown_localizer_parameter_names_the_known_ones_and_the_module():
    assert error_of(localizers={"wanda": {"sparsty": 0.1}}) == (
        "config key localizers.wanda.sparsty: unknown parameter 'sparsty' (did you mean 'sparsity'?); known: sparsity, "
        "tau (localizer wanda's defaults= in workflow/memprune/localize/wanda.py: set one of these, or add the "
        "parameter there with its description in param_docs=)")
    assert "known: none (localizer oracle's defaults= in workflow/memprune/localize/oracle.py" in error_of(
        localizers={"wanda": {}, "oracle": {"k": 1}})
    assert error_of(localizers={"wanda": {}, "w2": {"localizer": "wanda", "sparsty": 0.1}}).startswith(
        "config key localizers.w2.sparsty: unknown parameter 'sparsty' (did you mean 'sparsity'?); known: ")


@pytest.mark.parametrize("section", ["evaluate", "attack", "recovery"])
def test_unknown_variant_names_the_known_ones(section):
    from memprune import variants

    message = error_of(**{section: {"variants": ["none", "wenn"]}})
    assert message == (f"config key {section}.variants: unknown model variant 'wenn' (did you mean 'wen'?); "
                       f"known: {', '.join(variants.names())}")


def test_unknown_key_names_the_known_ones_at_every_level():
    top = error_of(evalute={})
    assert top.startswith("config key evalute: unknown key 'evalute' (did you mean 'evaluate'?); known: activations, ")
    nested = error_of(evaluate={"copy_treshold": 0.5})
    assert nested.startswith("config key evaluate.copy_treshold: unknown key 'copy_treshold' (did you mean "
                             "'copy_threshold'?); known: clip, collections, copy_threshold, ")
    deep = error_of(testbed={"report": {"seed": [0]}})
    assert deep.startswith("config key testbed.report.seed: unknown key 'seed' (did you mean 'seeds'?)")


def test_wrong_values_name_their_key_and_each_allowed_form():
    assert error_of(masks={"sparsity": "lots"}) == "config key masks.sparsity: 'lots' is not of type 'number'"
    assert error_of(evaluate={"max_subsets": -1}) == "config key evaluate.max_subsets: -1 is less than the minimum of 1"
    message = error_of(collections={"mem": {"set": "memorized", "n_subsets": 2}})
    assert message.startswith("config key collections.mem: ") and "matches none of its allowed forms" in message
    assert "'size' is a required property" in message and "'files' is a required property" in message


def test_a_valid_config_passes_and_the_registries_list_names_plainly():
    from memprune import localize, variants

    assert validate_config(copy.deepcopy(BASE))["localizers"] == {"wanda": {}}
    with pytest.raises(InputError, match=f"^unknown localizer 'wandaa'; known: {known_localizers()}$"):
        localize.get("wandaa")
    with pytest.raises(InputError, match="^unknown model variant 'x'; known: adversarial, "):
        variants.get("x")


def test_a_config_without_per_timestep_masks_stops_at_plan_time_naming_the_fix():
    """The analysis's IOU over time needs one localizer with per-timestep masks, whatever its place in the list;
    without one, the plan (`snakemake -n`) stops naming the fix, not the analysis job after the whole capture."""
    from pathlib import Path

    from memprune.plan.config import Plan

    repo = Path(__file__).resolve().parents[1]
    for localizers in ({"magnitude": {}}, {"magnitude": {}, "random": {"like": "magnitude"}}):
        cfg = validate_config({**copy.deepcopy(BASE), "localizers": localizers})
        with pytest.raises(InputError, match="config key localizers: none of .* gives per-timestep masks.*wanda"):
            Plan(cfg, repo)
    cfg = validate_config({**copy.deepcopy(BASE), "localizers": {"magnitude": {}, "wanda": {}}})  # wanda second
    assert list(Plan(cfg, repo).methods) == ["magnitude", "wanda"]
