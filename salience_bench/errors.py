"""The one exception type users see for bad input.

The CLI turns it into a one-line message and exit code 2; library callers can
catch it (it is a ``ValueError``) without importing anything else.
"""


class SalienceBenchError(ValueError):
    """Bad input or an impossible request, with a message that names the bad value."""


def is_int(value: object) -> bool:
    """A true integer (``bool`` is an ``int`` in Python, but never a count or a size here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, ``bool`` excluded."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
