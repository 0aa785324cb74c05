"""Attacks on a model variant's memorization, each one module (import from them; this package re-exports nothing):

* :mod:`.extraction`: Carlini et al.'s extraction attack (USENIX Security 2023): many generations per prompt,
  cliques of near-identical ones, checked against the prompt's training image;
* :mod:`.detection`: Wen et al.'s detection (ICLR 2024): how hard a prompt's text steers the denoiser, scored and
  ranked (ROC AUC, TPR at 1% FPR; the top k feed the closed loop).

Models are loaded and sampled through the variant registry (`memprune.variants`), so any registered variant (the
unedited model, an edited checkpoint, an inference-time mitigation) can be attacked. Later modules: recovery.
"""
