"""The one error type of bad user input: its message names the file, line or key, and the fix."""


class InputError(ValueError):
    """Bad user input: the message names the file, line or key."""
