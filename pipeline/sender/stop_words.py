"""STOP replies: is an inbound SMS an opt-out, and which consent changes does it make?

A reply is a stop request when every word in it is a stop word ("STOP", "«Стоп»",
"stop stop!!", "🛑 СТОП"), compared case-insensitively after Unicode NFKC, with 'ё' read
as 'е' and Latin look-alikes in Cyrillic words read as Cyrillic ("CTOП"). Anything else is
not ("stopwatch", "не стоп-кран", "стоп 2"): a word inside a sentence is too weak a signal
to act on without a human.

What a STOP changes: the marketing scope only. Transactional SMS (order status, payment
due, service notices) are service messages the customer needs to fulfil a contract; they
are not advertising, which is what the consent rules (and 38-FZ "On advertising", art. 18)
require an opt-out path for. Stopping them on a reflexive STOP to a promotion would let a
customer miss a payment reminder. An explicit ALL word ('STOPALL' by default) opts out of
both scopes; so does a transactional opt-out taken by support or CRM.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pipeline.sender.consent import MARKETING, OPT_OUT, TRANSACTIONAL

SOURCE = "sms_reply"
MAX_EVIDENCE_CHARS = 500

# Letters or digits, with inner hyphens/apostrophes: "стоп-кран" is one word, not "стоп".
_WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN_TO_CYRILLIC = str.maketrans("aceopxkmthby", "асеорхкмтнву")


def normalise_word(word: str) -> str:
    """The comparable form of one word: NFKC, casefolded, 'ё'→'е', look-alikes unified."""
    word = unicodedata.normalize("NFKC", word).casefold().replace("ё", "е")
    if _CYRILLIC.search(word):
        word = word.translate(_LATIN_TO_CYRILLIC)
    return word


def _normalise_all(words: Iterable[str]) -> frozenset[str]:
    return frozenset(normalise_word(w) for w in words)


@dataclass(frozen=True)
class StopWords:
    """The words that opt out: `marketing` ones of marketing, `all_scopes` ones of both.

    Build from config with `StopWords.of(...)`: words are stored normalised.
    """

    marketing: frozenset[str] = field(
        default_factory=lambda: _normalise_all(
            ["stop", "unsubscribe", "стоп", "отписка", "отписаться"]
        )
    )
    all_scopes: frozenset[str] = field(default_factory=lambda: _normalise_all(["stopall"]))

    @classmethod
    def of(cls, marketing: Iterable[str], all_scopes: Iterable[str] = ()) -> StopWords:
        return cls(_normalise_all(marketing), _normalise_all(all_scopes))

    @cached_property
    def every(self) -> frozenset[str]:
        """All stop words of either kind."""
        return self.marketing | self.all_scopes


DEFAULT_STOP_WORDS = StopWords()


def stop_scopes(text: str, words: StopWords = DEFAULT_STOP_WORDS) -> tuple[str, ...]:
    """The consent scopes `text` opts out of: (), ('marketing',) or both scopes.

    Both when any word is an `all_scopes` word and every word is a stop word.
    """
    if not isinstance(text, str):
        return ()
    found = [normalise_word(w) for w in _WORD.findall(text)]
    if not found:
        return ()
    every = words.every
    if not all(w in every for w in found):
        return ()
    if any(w in words.all_scopes for w in found):
        return (MARKETING, TRANSACTIONAL)
    return (MARKETING,)


def is_stop(text: str, words: StopWords = DEFAULT_STOP_WORDS) -> bool:
    """True when the reply `text` is a stop request (see the module docstring)."""
    return bool(stop_scopes(text, words))


def consent_changes_for_stop(
    inbound: Mapping[str, Any], now_ms: int, words: StopWords = DEFAULT_STOP_WORDS
) -> list[dict[str, Any]]:
    """The consent_change records (Avro dicts) an inbound_message makes; [] if not a stop.

    Called by the inbound agent for every MO message. The change is dated when the
    customer sent it (`received_at_ms`, never later than `now_ms`, which also stands in
    when it is missing), so a later opt-in elsewhere still wins. Evidence is the text.
    """
    text = inbound.get("text")
    if not isinstance(text, str):
        return []
    scopes = stop_scopes(text, words)
    phone = inbound.get("from_number")
    if not scopes or not phone:
        return []
    received = inbound.get("received_at_ms")
    if isinstance(received, int) and not isinstance(received, bool) and received > 0:
        changed_at_ms = min(received, now_ms)
    else:
        changed_at_ms = now_ms
    return [
        {
            "phone": phone,
            "scope": scope,
            "status": OPT_OUT,
            "source": SOURCE,
            "changed_at_ms": changed_at_ms,
            "customer_id": None,
            "evidence": text[:MAX_EVIDENCE_CHARS],
        }
        for scope in scopes
    ]
