"""A model edited by a localizer's masks (any method, any named layers), loaded from its edit checkpoint."""

from memprune.variants import Variant, _load_edited

VARIANT = Variant(name="pruned", label="pruned models", colour="tab:blue", needs_checkpoint=True, load=_load_edited,
                  description="the base with a memprune.formats.edits checkpoint applied (masked weights zeroed)")
