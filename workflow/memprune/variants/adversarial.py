"""Adversarial fine-tuning ("Finding Dori"): the base with the UNet weights the fine-tune changed, a weights edit
checkpoint written by `memprune adversarial-finetune` (mitigate/adversarial.py; config block `adversarial`)."""

from memprune.variants import Variant, _load_edited

VARIANT = Variant(name="adversarial", label="adversarial fine-tuning", colour="tab:purple", needs_checkpoint=True,
                  trained=True, load=_load_edited,
                  description="the UNet fine-tuned against the recovery attack (a memprune.formats.edits weights "
                              "checkpoint)")
