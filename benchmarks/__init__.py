"""memprune's maintained measurement tools, each printing the figures (ratios where the machine is noisy) that
docs/studies.md reports. Run one from the repository root as a module, e.g.

    python -m benchmarks.capture_overhead --help

They import memprune as installed and share memprune.bench (argument parsing, JSON lines, the default config, the
generate -> SSIM -> copy-rate loop). One-off studies live in experiments/<topic>/. The sub-folders
benchmarks/<model>/ that a workflow run leaves here are Snakemake's per-job benchmark files (git-ignored), which
`python -m benchmarks.localizer_costs` reads.
"""
