"""Person-name folding for QIDO matching: case-insensitive and component-word (fuzzy) forms."""

from __future__ import annotations

import re
import unicodedata

_SPLIT = re.compile(r"[\^=\s,]+")


def fold(text: str) -> str:
    """Unicode case-fold and NFKC-normalise, so 'ÄRZTIN' and 'ärztin' compare equal."""
    return unicodedata.normalize("NFKC", text).casefold()


def fold_person_name(value: str | None) -> str | None:
    """The whole PN value (all component groups) folded, for case-insensitive wildcard matching."""
    if value is None:
        return None
    return fold(value)


def person_name_words(value: str | None) -> str | None:
    """' smith john ' : every non-empty name component folded, space-delimited and padded."""
    if value is None:
        return None
    words = [w for w in _SPLIT.split(fold(value)) if w]
    return " " + " ".join(words) + " " if words else None
