# Density and pairwise IOU of the masks across subsets (the paper's Figures 1 and 2), with two controls:
# a non-memorized collection and random masks of equal per-layer density.


rule analysis:
    conda:
        "../envs/memprune.yaml"
    input:
        all_masks(),
    output:
        density=report(f"{RESULTS}/density.nc", category="Localization", caption="../report/density.rst"),
        iou=f"{RESULTS}/iou.nc",
        fig_iou=report(f"{RESULTS}/figures/iou.png", category="Localization", caption="../report/iou.rst"),
        fig_density=report(f"{RESULTS}/figures/density.png", category="Localization", caption="../report/density_fig.rst"),
    params:
        collections=json.dumps({c: {"control": bool(spec.get("control", False)), "masks": collection_masks(c)}
                                for c, spec in config["collections"].items()}),
        seed=config["analysis"]["random_control_seed"],
    threads: 4  # layers in parallel; Snakemake caps it at --cores
    log:
        f"logs/{MODEL['name']}/analysis.log",
    benchmark:
        f"benchmarks/{MODEL['name']}/analysis.tsv"
    shell:
        "python -m memprune --log {log} analyze --collections-json {params.collections:q} --seed {params.seed} --jobs {threads} "
        "--density {output.density} --iou {output.iou} --fig-density {output.fig_density} "
        "--fig-iou {output.fig_iou} 2>> {log}"
