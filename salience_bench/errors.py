"""The one exception type users see for bad input.

The CLI turns it into a one-line message and exit code 2; library callers can
catch it (it is a ``ValueError``) without importing anything else.
"""


class SalienceBenchError(ValueError):
    """Bad input or an impossible request, with a message that names the bad value."""
