"""What log records and messages show of ids that a user may have filled with a secret.

Generic: an id is the caller's (a saga id, an order id), and a caller may
put a card number in it. Anything that quotes an id in a log record or an
error message shows it through `mask_digits`.
"""

from __future__ import annotations

import re

__all__ = ["mask_digits"]

_DIGIT_RUN = re.compile(r"\d(?:[\s-]*\d){11,}")


def mask_digits(text: str) -> str:
    """`text` with every run of 12 or more digits (a card number, perhaps; spaces and dashes
    between them count as part of the run) shown as `<12+ digits>`."""
    return _DIGIT_RUN.sub("<12+ digits>", text)
