"""Per-prompt stages cut into jobs (config `chunks`): which prompts each job of NeMo's search takes, and the files
its chunks write before the merge. The cut never changes a result: each prompt's search is independent of the
others in its job."""

from __future__ import annotations

from memprune.plan.config import Plan


def nemo_chunks(plan: Plan, pset: str) -> list[list[int]]:
    """The searched prompts of a set (`Plan.neuron_prompts`) in consecutive runs of `chunks.nemo`."""
    indices, n = plan.neuron_prompts(pset), int(plan.config["chunks"]["nemo"])
    return [indices[i : i + n] for i in range(0, len(indices), n)]


def nemo_chunk_file(plan: Plan, method: str, pset: str, chunk: int | str) -> str:
    return plan.neurons(method, pset).removesuffix(".nc") + f"/chunk{chunk}.nc"


def nemo_chunk_files(plan: Plan, method: str, pset: str) -> list[str]:
    return [nemo_chunk_file(plan, method, pset, k) for k in range(len(nemo_chunks(plan, pset)))]


def nemo_search_parts(plan: Plan, method: str, pset: str, indices: list[int]) -> list[list]:
    """[benchmark file, share] of the search jobs that searched `indices` (a subset's prompts): each chunk's share
    is the fraction of its prompts that are the subset's."""
    tag = plan.methods[method].tag
    parts = []
    for k, chunk in enumerate(nemo_chunks(plan, pset)):
        own = len(set(chunk) & set(indices))
        if own:
            parts.append([plan.bench(f"nemo/{method}/{tag}", f"{pset}_chunk{k}"), own / len(chunk)])
    return parts
