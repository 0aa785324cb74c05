"""The unedited model: every comparison's reference."""

from memprune.variants import Variant

VARIANT = Variant(name="none", label="no mitigation", colour="tab:red",
                  description="the model as trained")
