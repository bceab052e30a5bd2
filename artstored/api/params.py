"""Parsing what a client put in a query string or a header, refusing anything odd.

Python's ``str.isdigit`` accepts ``²`` and ``٣``, and ``int`` then fails or reads a digit
the client did not mean: only ASCII digits are numbers here.
"""

from __future__ import annotations

from datetime import datetime

from ..engine.errors import BadRequest
from ..index.search import parse_time_param


def ascii_int(text: str | None, low: int, high: int) -> int | None:
    """``text`` as a whole number in ``[low, high]`` written in ASCII digits, or None."""
    if text is None or not text or len(text) > 20 or not text.isascii() \
            or not text.isdigit():
        return None
    value = int(text)
    return value if low <= value <= high else None


def time_param(name: str, value: str) -> datetime:
    """An ISO 8601 query parameter in UTC; BadRequest ``invalid_filter`` if it is not one,
    or if it cannot be moved to UTC (year 1 east of Greenwich, 9999 west of it)."""
    try:
        return parse_time_param(name, value)
    except OverflowError:
        raise BadRequest(f"{name} is out of range: {value[:40]!r}",
                         code="invalid_filter") from None
