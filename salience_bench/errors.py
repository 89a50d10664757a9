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


SEED_LIMIT = 2**63  # torch's generators take a signed 64-bit seed


def check_seed(value: object, what: str = "seed") -> int:
    """``value`` as a seed: an integer in [0, 2^63), else a one-line error naming it."""
    if not is_int(value) or not 0 <= value < SEED_LIMIT:
        raise SalienceBenchError(f"{what} {value!r} must be an integer in [0, 2^63 − 1]")
    return value


def check_at_least(owner: object, name: str, floor: int, hint: str = "") -> None:
    """``owner.name`` an integer ≥ ``floor``, else a one-line error naming it as its flag reads (``max-length``)."""
    value = getattr(owner, name)
    if not is_int(value) or value < floor:
        raise SalienceBenchError(f"{name.replace('_', '-')} must be an integer ≥ {floor}{hint}, got {value!r}")
