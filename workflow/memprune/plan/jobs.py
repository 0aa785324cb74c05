"""What the localization jobs read and what `rule all` builds (`PlanJobs`, a part of `memprune.plan.config.Plan`):
the prompts of a capture chunk, the chunks and subsets of a collection, each method's inputs, the analysis's masks."""

from __future__ import annotations

import json

from memprune.plan.paths import LATEST
from memprune.plan.subsets import chunks_of


class PlanJobs:
    """The inputs of the capture, masks and analysis jobs, from a plan's sets, collections, methods and paths."""

    def neuron_prompts(self, pset: str) -> list[int]:
        """The indices of a prompt set's prompts in any subset of its collections (each searched once)."""
        return sorted({i for c in self.collections.values() if c.set == pset for s in c.subsets for i in s})

    def calibration_files(self, method: str) -> list[str]:
        return [self.sets[s].file for s in self.methods[method].params["calibration"]]

    def chunk_prompts(self, pset: str, chunk: int) -> list[str]:
        n = self.chunk_size()
        return self.prompts(pset)[chunk * n : (chunk + 1) * n]

    def collection_chunks(self, collection: str) -> list[str]:
        c = self.collections[collection]
        indices = sorted({i for s in c.subsets for i in s})
        return [self.chunk_store(c.set, k) for k in chunks_of(indices, self.chunk_size())]

    def subsets_json(self, collection: str) -> str:
        return json.dumps({str(i): list(s) for i, s in enumerate(self.collections[collection].subsets)})

    def mask_inputs(self, method: str, collection: str) -> dict:
        m = self.methods[method]
        inputs = {"layers": self.layers_file}
        if m.statistics:
            inputs["subsets"] = self.gathered(collection)
            inputs["null"] = f"{self.act_dir}/null.zarr"
        if m.reference:
            inputs["reference"] = self.masks_dir(m.reference, collection)
        if m.per_prompt:
            inputs["neurons"] = self.neurons(method, self.collections[collection].set)
        return inputs

    def all_mask_dirs(self) -> list[str]:
        return [self.masks_dir(m, c) for m in self.methods for c in self.collections]

    def analysis_json(self) -> str:
        return json.dumps({m: {c: {"control": col.control,
                                   "masks": [self.mask_store(m, c, i) for i in range(len(col.subsets))]}
                               for c, col in self.collections.items()} for m in self.methods})

    def targets(self) -> list[str]:
        """What `rule all` builds, what a newcomer needs first: the analysis (and a planted testbed's
        localization). The testbed report, a property of the shipped model, is a target named on the command line."""
        targets = list(self.analysis_outputs.values()) + list(LATEST)
        if self.derived and self.derived["kind"] == "planted":
            targets.append(f"{self.results}/localization.nc")
        return targets
