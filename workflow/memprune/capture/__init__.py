"""The capture stage: hooks that record the FFN inputs during sampling (`hooks`), and the gather of each subset's
statistics from the capture chunks (`gather`)."""
