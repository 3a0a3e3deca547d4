"""One error type for bad input: its message is a single line that says what is wrong and how to fix it."""


class NlakitError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2."""
