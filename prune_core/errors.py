"""Error types shared by the library, the CLI and the app.

`InputError` is a `ValueError`: the API raises it for bad user input (missing file,
wrong shapes, labels out of range, impossible ratios...). The CLI turns it into exit
code 2 with its message as one line on stderr; the app shows the message in the page.
"""


class InputError(ValueError):
    """Bad user input. The message is one line that names the problem."""


class Cancelled(RuntimeError):
    """A long-running stage stopped because its cancel token was set."""


def check_cancel(cancel) -> None:
    """Raise `Cancelled` when `cancel` (anything with `is_set()`, or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
