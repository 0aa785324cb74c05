"""The config schema documents every key (README: it "documents every key"): every property of every object,
however deep (through properties, items, oneOf / anyOf / allOf branches and additionalProperties schemas), and
every named-entry form of an open mapping (a prompt set, a collection, a localizer entry of another name), has a
non-empty one-line description; so does each localizer's entry, made from its module when a config is checked.
A pure walk of the schema: no subprocess, no workflow."""

import yaml

from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
BRANCHES = ("oneOf", "anyOf", "allOf")


def _described(node) -> bool:
    return isinstance(node, dict) and isinstance(node.get("description"), str) and bool(node["description"].strip())


def _children(node: dict, where: str):
    """(path, subschema, is_entry_form) of every schema nested in `node`; an entry form is a schema reached
    through additionalProperties or a branch that itself defines properties (a named entry's shape; an array's
    items are described by the array's own key)."""
    for key, sub in (node.get("properties") or {}).items():
        yield f"{where}.{key}" if where else key, sub, False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield f"{where}.<{key}>", node[key], key == "additionalProperties" and "properties" in node[key]
    for key in BRANCHES:
        for i, sub in enumerate(node.get(key) or ()):
            if isinstance(sub, dict):
                yield f"{where}.<{key}[{i}]>", sub, "properties" in sub


def undocumented(schema: dict) -> list[str]:
    """Paths of the properties (and entry forms) without a description, in schema order."""
    missing = []

    def walk(node, where):
        for path, sub, entry in _children(node, where):
            is_property = path.rsplit(".", 1)[-1][:1] != "<"
            if (is_property or entry) and not _described(sub):
                missing.append(path)
            if isinstance(sub, dict):
                walk(sub, path)

    walk(schema, "")
    return missing


def multiline(schema: dict) -> list[str]:
    """Paths whose description spans lines (the schema's style: one line each)."""
    out = []

    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("description"), str) and "\n" in node["description"].strip():
                out.append(where or "(top level)")
            for key, sub in node.items():
                walk(sub, f"{where}.{key}" if where else key)
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, "")
    return out


def load(text: str) -> dict:
    return yaml.safe_load(text)


def test_every_key_is_described():
    missing = undocumented(load(SCHEMA.read_text()))
    assert not missing, f"{len(missing)} schema keys without a description: {', '.join(missing)}"


def test_descriptions_are_one_line():
    assert not multiline(load(SCHEMA.read_text()))


def test_the_localizer_entries_made_from_their_modules_are_described():
    """The schema the config is checked against: each registered localizer's entry and parameters, made from its
    module (`description`, `param_docs`), are described as the YAML's keys are."""
    from memprune.plan.schema import load_schema

    schema = load_schema()
    assert len(schema["properties"]["localizers"]["additionalProperties"]["oneOf"]) >= 6
    assert undocumented(schema) == [] and multiline(schema) == []


def test_the_walk_reaches_every_kind_of_nesting():
    """The walk finds a missing description wherever the schema nests one: a property, an item's property, a
    branch's property, an open mapping's entry and its properties."""
    schema = load("""
type: object
description: top
properties:
  a: {type: integer, description: "an a"}
  b: {type: integer}
  c:
    type: object
    description: "a c"
    properties:
      d: {type: string, description: ""}
  lst:
    type: array
    description: "a list"
    items: {type: object, properties: {e: {type: integer}}}
  forms:
    description: "either"
    oneOf:
      - {type: string}
      - {type: object, properties: {f: {type: integer, description: "an f"}}}
  open:
    type: object
    description: "name -> entry"
    additionalProperties:
      type: object
      properties:
        g: {type: integer}
    """)
    assert undocumented(schema) == ["b", "c.d", "lst.<items>.e", "forms.<oneOf[1]>", "open.<additionalProperties>",
                                    "open.<additionalProperties>.g"]
