"""Where a plan's artifacts live: every path template, benchmark record and log of the workflow, defined once
(`PlanPaths`, a part of `memprune.plan.config.Plan`; costs are read from the benchmark records named here)."""

from __future__ import annotations

# The headline targets (`snakemake results/iou.nc`): copies of the loaded config's model's own (Plan.analysis_outputs)
LATEST = {"results/iou.nc": "iou", "results/density.nc": "density"}


class PlanPaths:
    """Paths of a plan's artifacts, from its model name, its capture and detection tags and its methods' tags."""

    name: str
    act_tag: str
    det_tag: str
    config: dict
    methods: dict

    @property
    def results(self) -> str:
        return f"results/{self.name}"

    @property
    def act_dir(self) -> str:
        return f"{self.results}/activations/{self.act_tag}"

    @property
    def det_dir(self) -> str:
        return f"{self.results}/detection/{self.det_tag}"

    def chunk_size(self) -> int:
        return self.config["activations"]["chunk_size"]

    def chunk_store(self, pset: str, chunk: int) -> str:
        return f"{self.act_dir}/{pset}/chunk{chunk}.zarr"

    def gathered(self, collection: str) -> str:
        return f"{self.act_dir}/subsets/{collection}"

    def masks_dir(self, method: str, collection: str) -> str:
        return f"{self.results}/masks/{method}/{self.methods[method].tag}/{collection}"

    def mask_store(self, method: str, collection: str, subset: int) -> str:
        return f"{self.masks_dir(method, collection)}/{subset}.zarr"

    def neurons(self, method: str, pset: str) -> str:
        """A per-prompt localizer's search over the prompts of a set that its collections use
        (memprune.localize.nemo_search)."""
        return f"{self.results}/{method}/{self.methods[method].tag}/neurons/{pset}.nc"


    def calibration(self, method: str) -> str:
        return f"{self.results}/{method}/{self.methods[method].tag}/calibration.nc"

    @property
    def analysis_outputs(self) -> dict[str, str]:
        """This model's density and IOU of the masks (rules/analysis.smk) and their figures, by output name."""
        files = {"density": "density.nc", "iou": "iou.nc", "fig_density": "figures/density.png",
                 "fig_iou": "figures/iou.png"}
        return {name: f"{self.results}/{file}" for name, file in files.items()}

    def pruned(self, method: str, collection: str, subset: int) -> str:
        return f"{self.results}/pruned/{method}/{self.methods[method].tag}/{collection}/{subset}"

    def bench(self, stage: str, name: str) -> str:
        """The Snakemake benchmark file of a job (costs are read from these)."""
        return f"benchmarks/{self.name}/{stage}/{name}.tsv"

    def log(self, stage: str, name: str) -> str:
        return f"logs/{self.name}/{stage}/{name}.log"

    def capture_bench(self, pset: str | None, chunk: int | None = None) -> str:
        return self.bench(f"capture/{self.act_tag}", "null" if pset is None else f"{pset}_chunk{chunk}")

    def masks_bench(self, method: str, collection: str) -> str:
        return self.bench(f"masks/{method}/{self.methods[method].tag}", collection)

    def prune_bench(self, method: str, collection: str, subset: int) -> str:
        return self.bench(f"prune/{method}/{self.methods[method].tag}", f"{collection}_{subset}")

    @property
    def report(self) -> str:
        """The testbed report of the model (rules/testbed.smk)."""
        return f"{self.results}/report.nc"

