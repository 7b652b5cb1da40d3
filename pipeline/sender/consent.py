"""Consent: may this phone number get an SMS in this lane?

State is one `ConsentState` per phone (E.164), folded from `consent_change` records by
`apply_change` (last writer wins by `changed_at_ms`; on a tie opt-out wins). A million of
them are kept per worker, so each scope is packed into a single int:

    packed = changed_at_ms << 8 | source_code << 2 | status_code      (0 = no record)

and `to_bytes()` is a fixed 19-byte struct. Sources outside `SOURCES` are kept as 'other':
the state only needs the decision and its provenance; the compacted consent topic keeps
the full record. A sender keeps every phone's state in a `ConsentTable`, which reads the
consent topic's usual records without a full Avro decode.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from pipeline import avro
from pipeline.errors import PermanentError
from pipeline.sender.decision import Reject, rejected, suppressed

MARKETING = "marketing"
TRANSACTIONAL = "transactional"
SCOPES = (MARKETING, TRANSACTIONAL)

OPT_IN = "opt_in"
OPT_OUT = "opt_out"
_STATUS_CODES = {OPT_IN: 1, OPT_OUT: 2}
_STATUSES = (None, OPT_IN, OPT_OUT)

# Code 0 is any source not listed; codes are stored, so only ever append.
SOURCES = ("other", "sms_reply", "web_form", "crm", "support", "import")
_SOURCE_CODES = {name: code for code, name in enumerate(SOURCES)}

_FORMAT_VERSION = 1
_STRUCT = struct.Struct("<BBqBq")  # version, marketing (flags, at), transactional (flags, at)


class InvalidConsentChange(PermanentError):
    """A consent_change record that cannot be applied (unknown scope or status)."""

    reason = "invalid_consent_change"


class ScopeConsent(NamedTuple):
    """The latest consent record of one scope, as read back from a `ConsentState`."""

    status: str
    source: str
    changed_at_ms: int


def _pack(status: str, source: str, changed_at_ms: int) -> int:
    return changed_at_ms << 8 | _SOURCE_CODES.get(source, 0) << 2 | _STATUS_CODES[status]


def _unpack(packed: int) -> ScopeConsent | None:
    if not packed:
        return None
    return ScopeConsent(_STATUSES[packed & 3], SOURCES[packed >> 2 & 63], packed >> 8)


class ConsentState:
    """Latest marketing and transactional consent of one phone number. Immutable.

    Read it with `.marketing` / `.transactional` (a `ScopeConsent` or None); store it with
    `to_bytes()` (19 bytes) and read it back with `ConsentState.from_bytes`.
    """

    __slots__ = ("_marketing", "_transactional")

    def __init__(self, marketing: int = 0, transactional: int = 0) -> None:
        # Packed ints, see the module docstring; build states with `apply_change`.
        self._marketing = marketing
        self._transactional = transactional

    @property
    def marketing(self) -> ScopeConsent | None:
        return _unpack(self._marketing)

    @property
    def transactional(self) -> ScopeConsent | None:
        return _unpack(self._transactional)

    def scope(self, scope: str) -> ScopeConsent | None:
        """The latest record of `scope` ('marketing' or 'transactional'), None if none."""
        return _unpack(self._marketing if scope == MARKETING else self._transactional)

    def to_bytes(self) -> bytes:
        """Fixed 19 bytes: version, then per scope a flags byte and changed_at_ms (int64)."""
        m, t = self._marketing, self._transactional
        return _STRUCT.pack(_FORMAT_VERSION, m & 0xFF, m >> 8, t & 0xFF, t >> 8)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsentState:
        """Inverse of `to_bytes`; raises `InvalidConsentChange` on bytes it did not write."""
        try:
            version, m_flags, m_at, t_flags, t_at = _STRUCT.unpack(data)
        except struct.error as exc:
            raise InvalidConsentChange(f"consent state: {exc}") from None
        if version != _FORMAT_VERSION:
            raise InvalidConsentChange(f"consent state: unknown format version {version}")
        return cls(m_at << 8 | m_flags if m_flags else 0, t_at << 8 | t_flags if t_flags else 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConsentState):
            return NotImplemented
        return (self._marketing, self._transactional) == (
            other._marketing,
            other._transactional,
        )

    def __hash__(self) -> int:
        return hash((self._marketing, self._transactional))

    def __repr__(self) -> str:
        return f"ConsentState(marketing={self.marketing!r}, transactional={self.transactional!r})"


def _supersedes(new: int, old: int) -> bool:
    """Last writer wins by changed_at_ms; on equal times an opt-out beats an opt-in."""
    if not old:
        return True
    new_at, old_at = new >> 8, old >> 8
    if new_at != old_at:
        return new_at > old_at
    return (new & 3) == _STATUS_CODES[OPT_OUT] and (old & 3) != _STATUS_CODES[OPT_OUT]


def apply_change(state: ConsentState | None, change: Mapping[str, Any]) -> ConsentState:
    """Fold one consent_change record (a decoded Avro dict) into the phone's state.

    Called by the consent agent for every record of the consent topic, in any order:
    the result does not depend on arrival order. Returns `state` itself (same object)
    when the change is older than what is known or repeats it, so callers can skip the
    write. Raises `InvalidConsentChange` (permanent: dead-letter it) for an unknown scope
    or status or a missing timestamp.
    """
    scope = change.get("scope")
    status = change.get("status")
    changed_at_ms = change.get("changed_at_ms")
    if scope not in SCOPES:
        raise InvalidConsentChange(f"unknown consent scope {scope!r}; expected one of {SCOPES}")
    if status not in _STATUS_CODES:
        raise InvalidConsentChange(
            f"unknown consent status {status!r}; expected {OPT_IN!r} or {OPT_OUT!r}"
        )
    if not isinstance(changed_at_ms, int) or isinstance(changed_at_ms, bool):
        raise InvalidConsentChange(f"changed_at_ms must be epoch ms, got {changed_at_ms!r}")
    new = _pack(status, change.get("source") or "other", changed_at_ms)
    if state is None:
        state = _EMPTY
    if scope == MARKETING:
        if not _supersedes(new, state._marketing):
            return state
        return ConsentState(new, state._transactional)
    if not _supersedes(new, state._transactional):
        return state
    return ConsentState(state._marketing, new)


_EMPTY = ConsentState()
_OPT_IN_CODE = _STATUS_CODES[OPT_IN]
_OPT_OUT_CODE = _STATUS_CODES[OPT_OUT]


def check_consent(lane: str, state: ConsentState | None) -> Reject | None:
    """May a `lane` SMS go to the phone whose consent is `state` (None: nothing known)?

    Called per request after number normalisation. Returns None to go on, or:
    - marketing: suppressed 'no_marketing_consent' without an explicit marketing opt-in;
      suppressed 'opted_out' after a marketing opt-out, or after a transactional opt-out
      at or after the opt-in (who refuses even service messages refuses ads too);
    - transactional: suppressed 'opted_out' only after an explicit transactional opt-out
      (a marketing opt-out, e.g. a STOP reply, does not block service messages);
    - any other lane: rejected 'unknown_lane'.
    """
    if lane == TRANSACTIONAL:
        if state is not None and state._transactional & 3 == _OPT_OUT_CODE:
            return suppressed("opted_out", _describe(TRANSACTIONAL, state._transactional))
        return None
    if lane == MARKETING:
        if state is None:
            return suppressed("no_marketing_consent", "no marketing opt-in on record")
        m, t = state._marketing, state._transactional
        if m & 3 == _OPT_IN_CODE:
            if t & 3 == _OPT_OUT_CODE and t >> 8 >= m >> 8:
                return suppressed("opted_out", _describe(TRANSACTIONAL, t))
            return None
        if m:
            return suppressed("opted_out", _describe(MARKETING, m))
        return suppressed("no_marketing_consent", "no marketing opt-in on record")
    return rejected("unknown_lane", f"lane {lane!r} is neither {MARKETING} nor {TRANSACTIONAL}")


def _describe(scope: str, packed: int) -> str:
    status, source = _STATUSES[packed & 3], SOURCES[packed >> 2 & 63]
    return f"{scope} {status} via {source} at {packed >> 8}"


class ConsentTable(Mapping[str, ConsentState]):
    """The latest `ConsentState` of every phone: a mapping phone -> state, a million entries
    per sender, folded from consent_change records with `apply` or `apply_encoded`.

    A phone costs two ints rather than a str and an object: an E.164 number is keyed by the
    int of its digits (any other string by itself), and a state with a marketing record
    only, as most are, is kept as that scope's packed int (any other as its `ConsentState`).
    Reading builds the `ConsentState` callers expect.
    """

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[int | str, int | ConsentState] = {}

    def __getitem__(self, phone: str) -> ConsentState:
        kept = self._states.get(_key(phone))
        if kept is None:
            raise KeyError(phone)
        return _state(kept)

    def get(self, phone: str, default: Any = None) -> Any:
        kept = self._states.get(_key(phone))
        return default if kept is None else _state(kept)

    def __contains__(self, phone: object) -> bool:
        return isinstance(phone, str) and _key(phone) in self._states

    def __iter__(self) -> Iterator[str]:
        return (key if isinstance(key, str) else f"+{key}" for key in self._states)

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, change: Mapping[str, Any]) -> None:
        """Fold one decoded consent_change record in; raises as `apply_change` does."""
        phone = change["phone"]
        state = apply_change(self.get(phone), change)
        self._states[_key(phone)] = state if state._transactional else state._marketing

    def apply_encoded(self, value: bytes) -> None:
        """Fold one record as read from the consent topic in.

        Records in the current schema with its usual content are read by `_read_usual`,
        a few times faster than a full decode; any other is decoded with `avro.decode`
        and raises what it and `apply_change` raise.
        """
        usual = _read_usual(value)
        if usual is None:
            self.apply(avro.decode("consent_change", value))
            return
        key, is_marketing, new = usual
        kept = self._states.get(key)
        if kept is None:
            self._states[key] = new if is_marketing else ConsentState(0, new)
        elif type(kept) is int:
            if not is_marketing:
                self._states[key] = ConsentState(kept, new)
            elif _supersedes(new, kept):
                self._states[key] = new
        else:
            state = kept
            if is_marketing and _supersedes(new, state._marketing):
                self._states[key] = ConsentState(new, state._transactional)
            elif not is_marketing and _supersedes(new, state._transactional):
                self._states[key] = ConsentState(state._marketing, new)


def _key(phone: str) -> int | str:
    """The table's key of `phone`: the int of an E.164 number's digits ('+', then up to 15
    ASCII digits, the first not 0: the int gives back that string), else `phone` itself."""
    digits = phone[1:]
    if (phone[:1] == "+" and len(digits) <= 15 and digits.isascii() and digits.isdigit()
            and digits[0] != "0"):
        return int(digits)
    return phone


def _state(kept: int | ConsentState) -> ConsentState:
    return kept if isinstance(kept, ConsentState) else ConsentState(kept)


# Reading the consent topic's usual record without a full Avro decode (a few times faster,
# which is most of a sender's start-up). It is the current consent_change schema's
# single-object encoding: the header, then phone, scope, status and source as Avro strings
# (zigzag varint length, then the bytes), changed_at_ms as a zigzag varint, and the
# customer_id and evidence unions, null.
_USUAL_FIELDS = [
    ("phone", "string"), ("scope", "string"), ("status", "string"), ("source", "string"),
    ("changed_at_ms", "long"), ("customer_id", ["null", "string"]), ("evidence", ["null", "string"]),
]
_SCOPE_WORDS = {b"\x12marketing": True, b"\x1atransactional": False}
_STATUS_WORDS = {b"\x0copt_in": _STATUS_CODES[OPT_IN], b"\x0eopt_out": _STATUS_CODES[OPT_OUT]}
_SOURCE_WORDS = {bytes([2 * len(name)]) + name.encode(): code << 2
                 for name, code in _SOURCE_CODES.items()}
_SOURCE_WORDS[b"\x00"] = 0  # an empty source is 'other', as in apply_change
# Scope, status and source as encoded one after the other -> (is marketing, packed flags).
_WORDS = {scope + status + source: (is_marketing, source_flags | status_code)
          for scope, is_marketing in _SCOPE_WORDS.items()
          for status, status_code in _STATUS_WORDS.items()
          for source, source_flags in _SOURCE_WORDS.items()}


@lru_cache(maxsize=1)
def _usual_record() -> re.Pattern[bytes] | None:
    """The usual record of the current consent_change schema; None if the schema's fields
    are not the ones this pattern knows (then every record takes the full decode)."""
    contract = avro.registry().contract("consent_change")
    if [(f["name"], f["type"]) for f in contract.schema["fields"]] != _USUAL_FIELDS:
        return None
    words = [b"|".join(re.escape(w) for w in table)
             for table in (_SCOPE_WORDS, _STATUS_WORDS, _SOURCE_WORDS)]
    return re.compile(
        re.escape(avro.MAGIC + contract.fingerprint)
        + rb"(.)\+([1-9][0-9]{0,14})"  # phone: its length byte, then an E.164 number
        + b"((?:%s)(?:%s)(?:%s))" % tuple(words)  # known scope, status, source (`_WORDS`)
        + rb"([\x80-\xff]{0,8}[\x00-\x7f])"  # changed_at_ms: at most 9 bytes, an int64
        + rb"\x00\x00",  # no customer_id, no evidence
        re.DOTALL)


def _read_usual(value: bytes) -> tuple[int, bool, int] | None:
    """(table key of the phone, whether the scope is marketing, packed record) of a
    consent_change record in its usual form (`_usual_record`), None for any other, which
    the full decoder reads.

    What it gives is what `avro.decode` and `apply_change` make of the same bytes.
    """
    pattern = _usual_record()
    match = None if pattern is None else pattern.fullmatch(value)
    if match is None:
        return None
    length, digits, words, varint = match.groups()
    if length[0] != 2 * len(digits) + 2:
        return None
    zigzag = 0
    for byte in reversed(varint):
        zigzag = zigzag << 7 | byte & 0x7F
    is_marketing, flags = _WORDS[words]
    return int(digits), is_marketing, ((zigzag >> 1) ^ -(zigzag & 1)) << 8 | flags
