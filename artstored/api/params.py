"""Parsing what a client put in a query string or a header, refusing anything odd.

Python's ``str.isdigit`` accepts ``²`` and ``٣``, and ``int`` then fails or reads a digit
the client did not mean: only ASCII digits are numbers here.
"""

from __future__ import annotations


def ascii_int(text: str | None, low: int, high: int) -> int | None:
    """``text`` as a whole number in ``[low, high]`` written in ASCII digits, or None."""
    if text is None or not text or len(text) > 20 or not text.isascii() \
            or not text.isdigit():
        return None
    value = int(text)
    return value if low <= value <= high else None
