"""Mitigations: edits and inference-time methods that remove memorization (pruning a mask store into an edit
checkpoint, Wen et al., adversarial fine-tuning). The registry of compared models is `memprune.variants`."""
