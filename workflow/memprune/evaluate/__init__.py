"""Evaluation of edited models against the unedited model and inference-time mitigations (the paper's section
5.2, Figures 3 and 4). Every model is a variant of the registry `memprune.variants` (`none`, the unedited model;
`pruned`, a model edited by one localization method's mask; `wen`, Wen et al.'s mitigation; ...). Three steps,
one Snakemake job each:

* `eval-sample` (one job per evaluated model, `.sample`): generate every test prompt x seed with one variant
  (loaded and run through its registry entry) and record the wall-clock (and CPU) time of the generation, an
  inference-time mitigation included;
* `eval-score` (one job per evaluated model, `.score`): per (prompt, seed) the copy similarity to the prompt's
  ground-truth images (SSCD or SSIM, the max over its images), the CLIP score, prompt following (testbed
  scenes) and the Frechet features;
* `eval-aggregate` (`.aggregate`, `.figures`): the fair split (a pruned model is tested on the memorized prompts
  NOT in the subset its mask came from; the baselines on the same prompts, so every comparison is on one test
  set), copy rates, Frechet distances, time on the test set (plus, for pruned models, the measured cost of
  their masks), the `eval.nc` dataset (dims variant x subset x prompt x seed; variant ids `none`,
  `pruned:<method>`, other variants by name), a summary table and the figures.

Prompts (`.prompts`): the memorized prompt set (its first `max_memorized`), then the non-memorized prompts
(generalization: the testbed's held-out scene captions, COCO captions for SD). Training images (`.training_images`):
the testbed dataset's manifest (caption -> images), or a directory `<root>/<index>/*.png` where <index> is the
prompt's 0-based position in the memorized prompt file. The command line is `.cli`.

Intervals (`.intervals`: Wilson, the bootstrap over prompts, paired differences; `.eval_intervals` for eval.nc
and the summary table, `.leaderboard_intervals` for the leaderboard) are computed from the per-prompt data.

Modules import one way: figures, aggregate -> score, sample -> prompts, training_images; aggregate, leaderboard ->
eval_intervals -> intervals.
"""
