"""User-facing errors.

A ``UserError`` is bad input or a missing prerequisite that the user can fix. The CLI
prints its message as one line (``tomsparse: error: ...``) and exits with code 2; it
never shows a traceback for these.
"""


class UserError(Exception):
    """Bad input or environment; the message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # One line: a multi-line message would defeat the "one clear line" promise.
        super().__init__(" ".join(str(message).split()))
