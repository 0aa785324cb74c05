# Density and pairwise IOU of the masks across subsets (the paper's Figures 1 and 2) for every localizer side by
# side (`method` dimension), with two controls: a non-memorized collection and random masks of equal density.


rule analysis:
    conda:
        CONDA_ENV
    input:
        PLAN.all_mask_dirs(),
    output:
        density=report("results/density.nc", category="Localization", caption="../report/density.rst"),
        iou="results/iou.nc",
        fig_iou=report("results/figures/iou.png", category="Localization", caption="../report/iou.rst"),
        fig_density=report("results/figures/density.png", category="Localization", caption="../report/density_fig.rst"),
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
        shell:
            memprune("localization", "--model {input.model} --stores-json {params.stores:q} --out {output}")
