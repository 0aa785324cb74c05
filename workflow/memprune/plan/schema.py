"""The config checked against workflow/schemas/config.schema.yaml, with errors that name the fix, and completed:
every schema default filled in (nested ones too: each section's `default: {}` lets its keys' defaults apply), as
Snakemake's `validate(..., set_default=True)` fills them, and the shared keys resolved (a stage's
`copy_threshold: null` takes the top-level `copy_threshold`).

`validate_config(config)` is what the Snakefile calls; `resolve_shared(config)` runs again when a `Plan` is built
(idempotent), so a config validated elsewhere (`snakemake.utils.validate`) plans the same. No Snakemake import.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path

import yaml

from memprune.errors import InputError

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

# the stages whose copy threshold defaults to the top-level one: (section, subsection or None)
COPY_THRESHOLD_KEYS = (("testbed", "report"), ("evaluate", None), ("attack", None), ("recovery", None),
                       ("adversarial", None))
VARIANT_LISTS = ("evaluate", "attack", "recovery")  # sections whose `variants` name registry variants


@functools.lru_cache(maxsize=4)
def _parsed_schema(path: str, mtime_ns: int) -> dict:
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The schema, parsed once per process (the Snakefile validates every config it reads, the stacked
    leaderboard's too), with `localizers` made from the registered localizer modules
    (`memprune.plan.localizer_schema`); each caller gets its own copy."""
    from memprune.plan.localizer_schema import add_localizers

    return add_localizers(copy.deepcopy(_parsed_schema(str(SCHEMA), SCHEMA.stat().st_mtime_ns)))


def _unknown(where: str, what: str, name: str, known) -> InputError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"config key {where}: unknown {what} {name!r}{hint}; known: {', '.join(known)}")


def _check_keys(node, schema: dict, where: str) -> None:
    """Keys of a section that the schema closes (additionalProperties: false) must be among its properties
    (`localizers` is checked against its modules: `check_localizers`)."""
    if not isinstance(node, dict) or "properties" not in schema:
        return
    props = schema["properties"]
    for key, value in node.items():
        path = f"{where}.{key}" if where else key
        if path == "localizers":
            continue
        if key in props:
            _check_keys(value, props[key], path)
        elif schema.get("additionalProperties") is False:
            raise _unknown(path, "key", key, props)


def check_names(config: dict, schema: dict | None = None) -> None:
    """Unknown keys, localizers, their parameters and variants, each named with the known ones (before the
    schema's own check, whose message for them is a `oneOf` dump)."""
    from memprune import variants
    from memprune.plan.localizer_schema import check_localizers

    schema = schema or load_schema()
    check_localizers(config, schema)
    _check_keys(config, schema, "")
    known_variants = variants.names()
    for section in VARIANT_LISTS:
        listed = config.get(section).get("variants") if isinstance(config.get(section), dict) else None
        for v in listed if isinstance(listed, list) else []:
            if isinstance(v, str) and v not in known_variants:
                raise _unknown(f"{section}.variants", "model variant", v, known_variants)


def _schema_error(config: dict, schema: dict) -> InputError | None:
    """The schema's most relevant complaint about `config`, as `config key a.b.c: ...`."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return None
    where = ".".join(map(str, error.absolute_path)) or "(top level)"
    if error.validator == "oneOf" and error.context:  # none of the allowed forms: say what each one lacks
        forms = sorted({e.message for e in error.context})
        return InputError(f"config key {where}: {error.instance!r} matches none of its allowed forms: "
                          f"{' | '.join(forms)}")
    return InputError(f"config key {where}: {error.message}")


def resolve_shared(config: dict) -> dict:
    """Fill each stage's unset copy threshold from the top-level `copy_threshold` (in place)."""
    top = config["copy_threshold"]
    for section, sub in COPY_THRESHOLD_KEYS:
        node = config.get(section)
        if isinstance(node, dict) and sub:
            node = node.get(sub)
        if isinstance(node, dict) and node.get("copy_threshold") is None:
            node["copy_threshold"] = top
    return config


def schema_order(node, schema: dict):
    """A section's keys in the schema's order (in place), so that the same values give the same job parameters
    (e.g. `--variant-params`) whichever file set them; open mappings (localizers, collections) keep theirs."""
    if isinstance(node, dict) and "properties" in schema:
        props = schema["properties"]
        if schema.get("additionalProperties") is False:
            items = sorted(node.items(), key=lambda kv: list(props).index(kv[0]))
            node.clear()
            node.update(items)
        for key, value in node.items():
            if key in props:
                schema_order(value, props[key])
    return node


def fill_defaults(config: dict, schema: dict) -> dict:
    """Every schema default set where the config leaves the key out, in place: `snakemake.utils.validate`'s
    `set_default=True` (jsonschema's documented extension of `properties`), without importing Snakemake. A
    section's `default: {}` is set before its keys are visited, so nested defaults apply too."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, sub):
        if isinstance(instance, dict):
            for key, spec in props.items():
                if "default" in spec:
                    instance.setdefault(key, copy.deepcopy(spec["default"]))
        yield from properties(validator, props, instance, sub)

    validators.extend(Draft202012Validator, {"properties": set_defaults})(schema).validate(config)
    return config


def validate_config(config: dict) -> dict:
    """Check `config` (names first, then the schema), fill the schema's defaults and resolve the shared keys,
    in place; raises InputError naming the key and the fix."""
    schema = load_schema()
    check_names(config, schema)
    error = _schema_error(copy.deepcopy(config), schema)
    if error is not None:
        raise error
    fill_defaults(config, schema)
    return resolve_shared(schema_order(config, schema))
