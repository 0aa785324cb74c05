"""The config schema of `localizers`, made from the registered localizer modules when a config is checked, and
the check of that section, whose errors name the module to edit.

A localizer's parameters are declared once, in its module (`memprune.localize.Localizer`): `defaults` and
`param_docs`. Its entry `localizers.<name>` accepts exactly those parameters; each one's type is its default's
(a number, an integer, a string, a list of ...), with the constraints `param_docs` adds; a parameter named like a
shared key of `masks` (sparsity, tau) also takes that key's constraints, and its value defaults to that key when
the config sets it, else to the module's default (the plan's `methods`). An entry of another name runs a
registered localizer at other parameters (`wanda_10: {localizer: wanda, sparsity: 0.1}`); one of a method that
imitates another (random) names the imitated one (`like`). No defaults are written into the config: the plan
takes them from the module, so the schema's own fill (Snakemake's `validate`) and ours agree.
"""

from __future__ import annotations

import difflib
import json

from memprune.errors import InputError

SHARED = "masks"  # the section whose keys every localizer with a parameter of that name shares


def _type_of(value) -> dict:
    """The JSON-schema type of a default: the type a config's value must have."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, dict):
        return {"type": "object"}
    if isinstance(value, (list, tuple)):
        items = [_type_of(v) for v in value]
        return {"type": "array", **({"items": items[0]} if items and all(i == items[0] for i in items) else {})}
    return {}  # None: any value


def parameter_schema(loc, key: str, shared: dict) -> dict:
    doc = loc.param_docs[key]
    declared = dict(doc) if isinstance(doc, dict) else {"description": doc}
    spec = _type_of(loc.defaults[key])
    default = json.dumps(loc.defaults[key])
    if key in shared:
        spec.update({k: v for k, v in shared[key].items() if k not in ("default", "description")})
        default = f"{SHARED}.{key} when set, else {default}"
    spec.update(declared)
    spec["description"] = f"{declared['description'].strip()}; default: {default}"
    return spec


def entry_schema(loc, shared: dict) -> dict:
    """The schema of `localizers.<loc.name>`: its parameters, nothing else (null: all defaults)."""
    return {"type": ["object", "null"], "additionalProperties": False,
            "description": f"{loc.description} ({loc.source})",
            "properties": {k: parameter_schema(loc, k, shared) for k in loc.defaults}}


def renamed_schema(loc, shared: dict) -> dict:
    """The schema of an entry of another name that runs `loc` (`localizer: <loc.name>`)."""
    return {"type": "object", "required": ["localizer", *(["like"] if loc.reference else [])],
            "additionalProperties": False, "description": f"{loc.name} at other parameters ({loc.source})",
            "properties": {"localizer": {"const": loc.name, "description": f"the implementation: {loc.description}"},
                           **{k: parameter_schema(loc, k, shared) for k in loc.defaults}}}


def add_localizers(schema: dict) -> dict:
    """`schema` (the parsed config schema) with `localizers` made from the registry, in place: a property per
    registered localizer and, for entries of other names, one form per localizer."""
    from memprune import localize

    section = schema["properties"]["localizers"]
    shared = schema["properties"][SHARED]["properties"]
    registered = [localize.get(n) for n in localize.names()]
    section["properties"] = {loc.name: entry_schema(loc, shared) for loc in registered}
    section["additionalProperties"] = {"description": section["additionalProperties"]["description"],
                                       "oneOf": [renamed_schema(loc, shared) for loc in registered]}
    return schema


def _close(name, known) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_localizer(where: str, name, known) -> InputError:
    return InputError(f"config key {where}: unknown localizer {name!r}{_close(name, known)}; known: "
                      f"{', '.join(known)}")


def _unknown_parameter(where: str, key, loc) -> InputError:
    known = sorted(loc.defaults)
    return InputError(f"config key {where}.{key}: unknown parameter {key!r}{_close(key, known)}; known: "
                      f"{', '.join(known) or 'none'} (localizer {loc.name}'s defaults= in {loc.source}: set one of "
                      "these, or add the parameter there with its description in param_docs=)")


def check_localizers(config: dict, schema: dict) -> None:
    """Every entry of `config["localizers"]` against its localizer's schema (`schema` from `add_localizers`), with
    errors naming the key, the known names and the module: an unknown localizer or parameter, a wrong value."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from memprune import localize

    localizers = config.get("localizers")
    if not isinstance(localizers, dict):
        return  # the schema's own check names the section
    known = localize.names()
    section = schema["properties"]["localizers"]
    forms = {b["properties"]["localizer"]["const"]: b for b in section["additionalProperties"]["oneOf"]}
    for name, entry in localizers.items():
        where = f"localizers.{name}"
        impl = entry.get("localizer") if isinstance(entry, dict) else None
        if impl is None:
            if name not in known:
                raise InputError(f"{_unknown_localizer(where, name, known)}; an entry of another name sets "
                                 "`localizer:` (e.g. random_nemo: {localizer: random, like: nemo})")
            impl, spec = name, section["properties"][name]
        elif name in known:
            raise InputError(f"config key {where}.localizer: {name} is a localizer's own name, so its entry runs "
                             f"{name}: leave out `localizer:`, or give the entry another name")
        elif not isinstance(impl, str) or impl not in known:
            raise _unknown_localizer(f"{where}.localizer", impl, known)
        else:
            spec = forms[impl]
        loc = localize.get(impl)
        for key in entry if isinstance(entry, dict) else ():
            if key not in spec["properties"]:
                raise _unknown_parameter(where, key, loc)
        missing = [k for k in spec.get("required", ()) if k not in entry]
        if missing:
            raise InputError(f"config key {where}: a {impl} entry of another name needs {', '.join(missing)} "
                             f"({spec['properties'][missing[0]]['description']})")
        error = best_match(Draft202012Validator(spec).iter_errors(entry))
        if error is not None:
            path = ".".join([where, *map(str, error.absolute_path)])
            raise InputError(f"config key {path}: {error.message}")
