"""The config turned into typed values, paths and command arguments. `config.Plan`: prompt sets and collections,
with its parts `methods` (the localizers), `paths` (every artifact's path), `jobs` (what the localization jobs read)
and `commands` (command arguments, compared models); `compare`: the models evaluation and the attacks compare;
`subsets`; `inputs`: the prompt files, read as their jobs read them; `preflight` and `external`: the inputs from
outside the workflow, checked before a run. Pure: no Snakemake import."""

# The repository's top-level entries a run of the workflow reads: a directory holding links to these plans and runs
# like a clone (the README/docs command tests and `benchmarks/plan_time.py` lay out their clones so).
WORKFLOW_TREE = ("Snakefile", "config.yaml", "config", "rules", "workflow", "resources", "report", "envs")


def lay_out_clone(tree, wd) -> None:
    """Link `tree`'s `WORKFLOW_TREE` entries into the directory `wd` (created when missing)."""
    from pathlib import Path

    tree, wd = Path(tree), Path(wd)
    wd.mkdir(parents=True, exist_ok=True)
    for entry in WORKFLOW_TREE:
        (wd / entry).symlink_to(tree / entry)
