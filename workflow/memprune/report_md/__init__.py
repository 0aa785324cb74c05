"""`memprune report`: docs/results.md written from the result files, one section per question the project answers,
each with a table per config (`memprune.report_md.subspace`: does the memorization subspace exist;
`memprune.report_md.removal`: does pruning remove it, does it stay removed; `memprune.report_md.cost`: what it
costs). Each table is stamped once with its config files, the commit and the files it was read from; a file not
built is named with the snakemake command that builds it. The whole text is made before anything is written, then
written to a temporary path and renamed: an error leaves the previous file as it was
(`memprune.report_md.document`)."""
