# Density and pairwise IOU of the masks across subsets (the paper's Figures 1 and 2) for every localizer side by
# side (`method` dimension), with two controls: a non-memorized collection and random masks of equal density.
from memprune.plan.config import LATEST


# Under results/<model>/, so configs of different models keep theirs; rule latest_analysis copies them to the
# headline targets results/iou.nc and results/density.nc.
rule analysis:
    conda:
        CONDA_ENV
    input:
        PLAN.all_mask_dirs(),
    output:
        density=report(PLAN.analysis_outputs["density"], category="Localization", caption="../report/density.rst"),
        iou=PLAN.analysis_outputs["iou"],
        fig_iou=report(PLAN.analysis_outputs["fig_iou"], category="Localization", caption="../report/iou.rst"),
        fig_density=report(PLAN.analysis_outputs["fig_density"], category="Localization",
                           caption="../report/density_fig.rst"),
    params:
        methods=PLAN.analysis_json(),
    threads: 4  # layers in parallel; Snakemake caps it at --cores
    log:
        PLAN.log("analysis", "analysis"),
    benchmark:
        PLAN.bench("analysis", "analysis")
    shell:
        memprune("analyze", f"--methods-json {{params.methods:q}} --seed {config['analysis']['random_control_seed']} "
                 "--jobs {threads} --density {output.density} --iou {output.iou} --fig-density {output.fig_density} "
                 "--fig-iou {output.fig_iou}")


# `snakemake results/iou.nc`: the loaded config's density.nc and iou.nc, copied (a temporary file renamed, so the
# target is whole or absent, and its time stamp is the copy's: newer than its input). Another config's run replaces
# them (its inputs differ); results/<model>/ keeps each model's own.
rule latest_analysis:
    localrule: True
    conda:
        CONDA_ENV
    input:
        **{name: PLAN.analysis_outputs[name] for name in LATEST.values()},
    output:
        **{name: path for path, name in LATEST.items()},
    log:
        PLAN.log("analysis", "latest"),
    shell:
        "(cp {input.iou} {output.iou}.tmp && mv {output.iou}.tmp {output.iou} && "
        "cp {input.density} {output.density}.tmp && mv {output.density}.tmp {output.density}) 2> {log}"


# A planted testbed (testbed.derived.kind planted): every localizer's masks scored against the planted units.
if PLAN.derived and PLAN.derived["kind"] == "planted":

    rule localization:
        conda:
            CONDA_ENV
        input:
            model=PLAN.model_dir,
            masks=PLAN.all_mask_dirs(),
        output:
            report(f"{PLAN.results}/localization.nc", category="Localization", caption="../report/localization.rst"),
        params:
            stores=json.dumps({m: {c: [PLAN.mask_store(m, c, i) for i in range(len(col.subsets))]
                                   for c, col in PLAN.collections.items()} for m in PLAN.methods}),
        log:
            PLAN.log("analysis", "localization"),
        benchmark:
            PLAN.bench("analysis", "localization")
        shell:
            memprune("localization", "--model {input.model} --stores-json {params.stores:q} --out {output}")
