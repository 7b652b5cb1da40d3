"""Operator content rules: the sender check that decides whether a text may go out as is.

Rules come from `config/content.yaml`, loaded and compiled once (`ContentRules.load`);
`check_content` is then a pure function per message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.sender.decision import Reject, rejected
from pipeline.sms.encoding import UCS2, SmsSize, is_gsm7, segment_count
from pipeline.sms.transliterate import transliterate

TRANSACTIONAL = "transactional"
MARKETING = "marketing"
LANES = frozenset({TRANSACTIONAL, MARKETING})

# Left-overs of template rendering: jinja markers and `{name}` / `${name}` placeholders.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\$\{|\{[A-Za-z_][\w.]*\}", re.ASCII)
# http(s) URLs and bare www. links; group "host" is the host without userinfo or port.
_URL = re.compile(
    r"(?:\bhttps?://(?:[^\s/\\?#@]+@)?|(?<![\w.@/-])(?=www\.))(?P<host>[\w.-]+)",
    re.IGNORECASE,
)
# Alphanumeric originators hold at most 11 characters; numeric ones (short codes, MSISDN) 15.
_SENDER_ID = re.compile(r"[A-Za-z0-9 ._&-]{1,11}|\+?[0-9]{1,15}")
_DOMAIN = re.compile(r"(?:\*\.)?(?:[\w-]+\.)+[\w-]+")
_MAX_SEGMENTS_CAP = 255
_YO_CLASSES = str.maketrans({"е": "[её]", "ё": "[её]", "Е": "[ЕЁ]", "Ё": "[ЕЁ]"})

_KEYS = {
    "max_segments": "a positive integer",
    "registered_sender_ids": "a list of sender ids",
    "forbidden_words": "a list of words or phrases",
    "link_domains": "a list of domains",
    "marketing_footer_patterns": "a non-empty list of regular expressions",
    "cost_per_segment": "a non-negative number",
}


@dataclass(frozen=True)
class ContentVerdict:
    """A text that passed the content rules, as it should be sent.

    `text_to_send` may differ from the request text when it was transliterated to fit
    GSM-7; `encoded` is its encoding and segment count; `cost` is segments × the
    configured price per segment.
    """

    text_to_send: str
    encoded: SmsSize
    transliterated: bool
    cost: float


@dataclass(frozen=True)
class ContentRules:
    """The operator content rules, validated and compiled (see `config/content.yaml`)."""

    max_segments: int
    registered_sender_ids: frozenset[str]
    forbidden_words: tuple[str, ...]
    link_domains: tuple[str, ...]
    marketing_footer_patterns: tuple[str, ...]
    cost_per_segment: float
    # Compiled from the fields above, once.
    _forbidden: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _domains_exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _domain_suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _footers: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domains = [d.lower().rstrip(".") for d in self.link_domains]
        compiled = {
            "_forbidden": _compile_words(self.forbidden_words),
            "_domains_exact": frozenset(d for d in domains if not d.startswith("*.")),
            "_domain_suffixes": tuple("." + d.removeprefix("*.") for d in domains),
            "_footers": tuple(re.compile(p) for p in self.marketing_footer_patterns),
        }
        for name, value in compiled.items():
            object.__setattr__(self, name, value)

    @classmethod
    def load(cls, path: str | Path) -> ContentRules:
        """Read and validate the rules file; called at start-up and on config publish.

        Raises ConfigError listing every problem (unreadable file, bad YAML, unknown or
        missing keys, wrong types, invalid regexes or domains).
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "content rules") -> ContentRules:
        """Validate already-parsed rules (e.g. published config); raises ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError([f"{source}: expected a mapping, got {_kind(data)}"])
        problems = [
            f"{source}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})"
            for key in data
            if key not in _KEYS
        ]
        problems += [
            f"{source}: missing key {key!r} ({what})"
            for key, what in _KEYS.items()
            if key not in data
        ]
        if problems:
            raise ConfigError(problems)

        max_segments = data["max_segments"]
        if not _is_int(max_segments) or not 1 <= max_segments <= _MAX_SEGMENTS_CAP:
            problems.append(
                f"{source}: max_segments must be an integer from 1 to {_MAX_SEGMENTS_CAP},"
                f" got {max_segments!r}"
            )
        cost = data["cost_per_segment"]
        if not _is_number(cost) or not math.isfinite(cost) or cost < 0:
            problems.append(
                f"{source}: cost_per_segment must be a non-negative number, got {cost!r}"
            )

        sender_ids = _strings(data, "registered_sender_ids", source, problems)
        for sender_id in sender_ids:
            if not _SENDER_ID.fullmatch(sender_id):
                problems.append(
                    f"{source}: registered_sender_ids: {sender_id!r} is neither an"
                    " alphanumeric id of up to 11 characters nor a number of up to 15 digits"
                )
        words = _strings(data, "forbidden_words", source, problems)
        domains = tuple(
            d.lower().rstrip(".") for d in _strings(data, "link_domains", source, problems)
        )
        for domain in domains:
            if not _DOMAIN.fullmatch(domain):
                problems.append(
                    f"{source}: link_domains: {domain!r} is not a domain"
                    " (use 'example.ru' or '*.example.ru')"
                )
        patterns = _strings(data, "marketing_footer_patterns", source, problems)
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(
                    f"{source}: marketing_footer_patterns[{i}] {pattern!r} is not a valid"
                    f" regular expression: {exc}"
                )
        if isinstance(data["marketing_footer_patterns"], list) and not patterns:
            problems.append(
                f"{source}: marketing_footer_patterns must hold at least one pattern"
                " (otherwise no marketing SMS could pass)"
            )
        if problems:
            raise ConfigError(problems)

        return cls(
            max_segments=max_segments,
            registered_sender_ids=frozenset(sender_ids),
            forbidden_words=tuple(words),
            link_domains=domains,
            marketing_footer_patterns=tuple(patterns),
            cost_per_segment=float(cost),
        )

    def link_allowed(self, host: str) -> bool:
        """True when `host` is an allowed link domain or a subdomain of one."""
        host = host.lower().rstrip(".")
        return host in self._domains_exact or host.endswith(self._domain_suffixes)

    def has_opt_out_footer(self, text: str) -> bool:
        """True when `text` matches at least one marketing footer pattern."""
        return any(footer.search(text) is not None for footer in self._footers)

    def forbidden_word_in(self, text: str) -> str | None:
        """The configured forbidden word or phrase that `text` contains, if any."""
        if self._forbidden is None:
            return None
        match = self._forbidden.search(text)
        if match is None:
            return None
        found = match.group()
        for word in self.forbidden_words:
            if _word_pattern(word).fullmatch(found):
                return word
        return found


def check_content(
    text: str, lane: str, sender_id: str, rules: ContentRules, allow_transliteration: bool
) -> ContentVerdict | Reject:
    """Decide whether `text` may be sent from `sender_id` on `lane`, and in what form.

    Called per request after consent and dedup. Checks, in order: unrendered template
    placeholders, registered sender id, forbidden words, link domains, the opt-out footer
    (marketing lane), then the segment limit, after transliterating a UCS-2 text to GSM-7
    when allowed and no longer. Any failure is a 'rejected' `Reject` with reason
    `unrendered_placeholder`, `unregistered_sender_id`, `forbidden_word`,
    `link_domain_not_allowed`, `missing_opt_out_footer`, `too_many_segments`, or
    `unknown_lane` for a lane other than transactional/marketing. Never raises.
    """
    if lane not in LANES:
        return rejected("unknown_lane", f"lane {lane!r} is neither transactional nor marketing")
    # every placeholder form has a brace: most texts need no regex pass for them
    placeholder = _PLACEHOLDER.search(text) if "{" in text or "}" in text else None
    if placeholder is not None:
        return rejected(
            "unrendered_placeholder",
            f"text contains {placeholder.group()!r} at {placeholder.start()}",
        )
    if sender_id not in rules.registered_sender_ids:
        return rejected("unregistered_sender_id", f"sender id {sender_id!r} is not registered")
    word = rules.forbidden_word_in(text)
    if word is not None:
        return rejected("forbidden_word", f"text contains forbidden word {word!r}")
    for url in _links(text):
        host = url.group("host").rstrip(".-")
        if not rules.link_allowed(host):
            return rejected("link_domain_not_allowed", f"link to {host!r} is not allowed")
    if lane == MARKETING and not rules.has_opt_out_footer(text):
        return rejected("missing_opt_out_footer", "marketing text has no opt-out footer")

    size = segment_count(text)
    transliterated = False
    if size.encoding == UCS2 and allow_transliteration:
        latin = transliterate(text)
        if is_gsm7(latin):
            latin_size = segment_count(latin)
            if latin_size.segments <= size.segments:
                text, size, transliterated = latin, latin_size, True
    if size.segments > rules.max_segments:
        return rejected(
            "too_many_segments",
            f"{size.segments} {size.encoding} segments, at most {rules.max_segments} allowed",
        )
    return ContentVerdict(text, size, transliterated, size.segments * rules.cost_per_segment)


def _links(text: str) -> Iterable[re.Match[str]]:
    """`_URL`'s matches in `text`. Each needs "://" or "www." (any case) in the text: most
    texts have neither, and the search is skipped (it was a third of `check_content`)."""
    if "://" in text or "www." in text.lower():
        return _URL.finditer(text)
    return ()


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(_word_regex(word), re.IGNORECASE)


def _word_regex(word: str) -> str:
    # Any run of whitespace between the words of a phrase; е and ё alike.
    body = r"\s+".join(re.escape(part) for part in word.split())
    return body.translate(_YO_CLASSES)


def _compile_words(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(_word_regex(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _strings(data: Mapping[str, Any], key: str, source: str, problems: list[str]) -> list[str]:
    value = data[key]
    if not isinstance(value, list):
        problems.append(f"{source}: {key} must be {_KEYS[key]}, got {_kind(value)}")
        return []
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            problems.append(f"{source}: {key}[{i}] must be a non-empty string, got {item!r}")
        else:
            out.append(item.strip())
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__
