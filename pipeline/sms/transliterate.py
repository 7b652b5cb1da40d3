"""Russian Cyrillic → Latin transliteration, so a Russian SMS can go out as GSM-7.

A practical SMS scheme (what Russian readers see in Latin-script SMS), not a library
standard: ж→zh, х→h, ц→ts, ч→ch, ш→sh, щ→sch, ю→yu, я→ya, ё→yo, й/ы→y, ъ/ь dropped.
Case is kept: Жук → Zhuk, ЖУК → ZHUK. Typographic characters outside GSM-7 (« » — № ₽,
special spaces …) are replaced by GSM-7 look-alikes as well.
"""

from __future__ import annotations

import re

_LOWER = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "zh",
    "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "h", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya",
    # Neighbouring Cyrillic letters that turn up in Russian-language customer data.
    "і": "i", "ї": "yi", "є": "ye", "ґ": "g", "ў": "u",
}  # fmt: skip

_TYPOGRAPHY = {
    "«": '"', "»": '"', "„": '"', "“": '"', "”": '"', "‟": '"', "″": '"',
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "´": "'",
    "—": "-", "–": "-", "‒": "-", "―": "-", "−": "-", "‐": "-", "‑": "-",
    "№": "N", "₽": "RUB", "…": "...", "•": "*", "·": "*", "×": "x", "\t": " ",
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2007": " ", "\u2009": " ",
    "\u200a": " ", "\u202f": " ", "\u205f": " ", "\u3000": " ",
    "\u00ad": "", "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": "",
}  # fmt: skip


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for low, latin in _LOWER.items():
        table[ord(low)] = latin
        table[ord(low.upper())] = latin[:1].upper() + latin[1:]
    table.update((ord(c), latin) for c, latin in _TYPOGRAPHY.items())
    return table


_TABLE = _build_table()
_UPPER_CYRILLIC = "".join(c.upper() for c in _LOWER)
_MULTI_UPPER = "".join(c.upper() for c, latin in _LOWER.items() if len(latin) > 1)
# A multi-letter capital next to another Cyrillic capital is part of an all-caps word.
_CAPS_RUN = re.compile(
    f"(?<=[{_UPPER_CYRILLIC}])[{_MULTI_UPPER}]|[{_MULTI_UPPER}](?=[{_UPPER_CYRILLIC}])"
)
_CAPS_TABLE = {c.upper(): _LOWER[c].upper() for c in _LOWER if len(_LOWER[c]) > 1}


def _caps(match: re.Match[str]) -> str:
    return _CAPS_TABLE[match.group()]


def transliterate(text: str) -> str:
    """`text` with Russian letters in Latin and non-GSM typography replaced.

    Called by the content check when a UCS-2 text may be sent transliterated. Any Russian
    text comes out GSM-7; characters of other scripts and emoji are left as they are, so
    the caller must still check `is_gsm7` on the result. Never fails.
    """
    if _CAPS_RUN.search(text) is not None:
        text = _CAPS_RUN.sub(_caps, text)
    return text.translate(_TABLE)
