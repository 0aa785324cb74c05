"""Artifact formats: every output is written atomically (`store`), prompt files (`prompts`), mask stores (`masks`),
edit checkpoints (`edits`)."""
