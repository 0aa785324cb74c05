"""memprune: locate and prune memorization neurons in text-to-image diffusion models."""

__version__ = "0.1.0"
