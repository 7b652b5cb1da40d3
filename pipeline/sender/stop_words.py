"""STOP replies: is an inbound SMS an opt-out, and which consent changes does it make?

A reply is a stop request when every word in it is a stop word or part of a stop phrase
("STOP", "«Стоп»", "stop stop!!", "🛑 СТОП", "Стоп, всё!"), compared case-insensitively after Unicode NFKC, with 'ё' read
as 'е' and Latin look-alikes in Cyrillic words read as Cyrillic ("CTOП"). Anything else is
not ("stopwatch", "не стоп-кран", "стоп 2"): a word inside a sentence is too weak a signal
to act on without a human.

What a STOP changes: the marketing scope only. Transactional SMS (order status, payment
due, service notices) are service messages the customer needs to fulfil a contract; they
are not advertising, which is what the consent rules (and 38-FZ "On advertising", art. 18)
require an opt-out path for. Stopping them on a reflexive STOP to a promotion would let a
customer miss a payment reminder. An explicit ALL reply opts out of both scopes ('STOPALL',
'STOP ALL', 'СТОП ВСЕ' by default, in any case and with any punctuation: a customer who
types that means it); so does a transactional opt-out taken by support or CRM.

Configured entries are phrases of one or more words, normalised word by word like the
reply, so 'Стоп, всё!' matches the phrase 'СТОП ВСЕ'. A reply is a stop request when its
words can be read, in order, as a sequence of configured phrases; it opts out of both
scopes when one such reading uses an all-scopes phrase ("stop stop all").
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


def normalise_phrase(phrase: str) -> str:
    """The comparable form of a configured phrase: its words normalised, joined by a space.

    '' when `phrase` has no word at all ('!!!').
    """
    return " ".join(normalise_word(w) for w in _WORD.findall(phrase))


def _normalise_all(phrases: Iterable[str]) -> frozenset[str]:
    return frozenset(p for p in map(normalise_phrase, phrases) if p)


@dataclass(frozen=True)
class StopWords:
    """The phrases that opt out: `marketing` ones of marketing, `all_scopes` ones of both.

    Each phrase is normalised words joined by one space ('stop', 'stop all'). Build from
    config with `StopWords.of(...)`: phrases are stored normalised.
    """

    marketing: frozenset[str] = field(
        default_factory=lambda: _normalise_all(
            ["stop", "unsubscribe", "стоп", "отписка", "отписаться"]
        )
    )
    all_scopes: frozenset[str] = field(
        default_factory=lambda: _normalise_all(["stopall", "stop all", "стоп все"])
    )

    @classmethod
    def of(cls, marketing: Iterable[str], all_scopes: Iterable[str] = ()) -> StopWords:
        return cls(_normalise_all(marketing), _normalise_all(all_scopes))

    @cached_property
    def every(self) -> frozenset[str]:
        """All stop phrases of either kind."""
        return self.marketing | self.all_scopes

    @cached_property
    def _phrases(self) -> dict[tuple[str, ...], bool]:
        """Phrase as a word tuple -> True when it opts out of all scopes."""
        phrases = {tuple(p.split(" ")): False for p in self.marketing}
        phrases.update({tuple(p.split(" ")): True for p in self.all_scopes})
        return phrases

    @cached_property
    def _longest(self) -> int:
        return max((len(p) for p in self._phrases), default=0)


DEFAULT_STOP_WORDS = StopWords()


def stop_scopes(text: str, words: StopWords = DEFAULT_STOP_WORDS) -> tuple[str, ...]:
    """The consent scopes `text` opts out of: (), ('marketing',) or both scopes.

    () unless the words of `text` read, in order, as a sequence of stop phrases; both
    scopes when one such reading uses an `all_scopes` phrase.
    """
    if not isinstance(text, str):
        return ()
    found = tuple(normalise_word(w) for w in _WORD.findall(text))
    if not found:
        return ()
    phrases, longest = words._phrases, words._longest
    # reach[i]: the readings of found[:i] as phrases; None = none, else whether one of
    # them used an all-scopes phrase.
    reach: list[bool | None] = [None] * (len(found) + 1)
    reach[0] = False
    for i in range(len(found)):
        if reach[i] is None:
            continue
        for j in range(i + 1, min(i + longest, len(found)) + 1):
            all_scopes = phrases.get(found[i:j])
            if all_scopes is not None:
                reach[j] = bool(reach[j]) or reach[i] or all_scopes
    if reach[-1] is None:
        return ()
    return (MARKETING, TRANSACTIONAL) if reach[-1] else (MARKETING,)


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
