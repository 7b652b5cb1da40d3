"""Tracked short links: replace URLs in an SMS by `{base}/c/<code>` and check codes on click.

Called by the router right after rendering (so the text the sender measures for segments
already carries the short links) and by the redirect service on every click. Pure: no I/O,
no clock; the secret and base URL are passed in (`link_secret` / `link_base` read them from
the environment at start-up).

Code format (19 characters of base62, safe in GSM-7):

    code = base62(message_key ‖ index, 13 chars) + base62(tag, 6 chars)

* ``message_key``: the first 8 bytes of sha256(message_id). The message id is the request id
  (the idempotency key), so re-routing the same event yields the same short links.
* ``index``: the position (0-255) of the URL in the request's ``links`` list.
* ``tag``: HMAC-SHA256(secret, "rsl1" ‖ message_key ‖ index), truncated to 6 base62 chars
  (~35 bits). Any changed character fails the check, without a lookup.

The code holds no URL. The originals live in the request's ``links`` array (the router puts
them there); the redirect service indexes ``message_key -> (message_id, links)`` from the
request topics and redirects only to ``links[index]`` — never to anything from the query
string, so there is no open redirect. Two message ids sharing a 64-bit key are possible in
theory (birthday bound ~4e9 messages); the later one wins in the index.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError, PermanentError

DEFAULT_BASE = "https://s.rsl.ink"
DEV_SECRET = "rassylka-dev-link-secret"  # only for local runs; set RASSYLKA_LINK_SECRET in production
SECRET_ENV = "RASSYLKA_LINK_SECRET"
BASE_ENV = "RASSYLKA_LINK_BASE"

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PAYLOAD_CHARS = 13  # 9 bytes = 72 bits < 62**13
TAG_CHARS = 6
CODE_CHARS = PAYLOAD_CHARS + TAG_CHARS
MAX_LINKS = 256  # index is one byte; further URLs stay as they are

# An http(s) URL up to whitespace or a quote; trailing punctuation is trimmed afterwards.
URL_RE = re.compile(r"https?://[^\s<>\"'«»]+", re.IGNORECASE)
TRAILING = ".,;:!?…'\"»)]}"
CODE_RE = re.compile(rf"[0-9A-Za-z]{{{CODE_CHARS}}}")


class InvalidCode(PermanentError):
    """A short code that is malformed or whose HMAC tag does not match: answer 404."""

    reason = "invalid_link_code"


@dataclass(frozen=True)
class LinkRef:
    """What a verified code points at: a message (by its 64-bit key, hex) and a link index."""

    message_key: str
    index: int


def link_secret(environ: Mapping[str, str] | None = None) -> str:
    """The HMAC secret from RASSYLKA_LINK_SECRET, or the documented dev secret when unset."""
    env = os.environ if environ is None else environ
    return env.get(SECRET_ENV) or DEV_SECRET


def require_link_secret(environ: Mapping[str, str] | None = None, allow_dev: bool = False) -> str:
    """The secret the redirect service checks codes with, read once at its start.

    RASSYLKA_LINK_SECRET when set. Unset, the public development secret is returned only
    with `allow_dev` (the demo, local runs: anyone can forge links signed with it, so the
    caller warns); otherwise ConfigError saying what to set.
    """
    env = os.environ if environ is None else environ
    secret = env.get(SECRET_ENV)
    if secret:
        return secret
    if not allow_dev:
        raise ConfigError([
            f"{SECRET_ENV} is not set — set it to the secret the router signs links with "
            f"(or pass --dev to run locally with the public development secret)"
        ])
    return DEV_SECRET


def link_base(environ: Mapping[str, str] | None = None) -> str:
    """The short-link origin from RASSYLKA_LINK_BASE (default https://s.rsl.ink)."""
    env = os.environ if environ is None else environ
    return (env.get(BASE_ENV) or DEFAULT_BASE).rstrip("/")


def message_key(message_id: str) -> str:
    """The 64-bit key (16 hex chars) a code carries for `message_id`."""
    return hashlib.sha256(message_id.encode()).digest()[:8].hex()


def _b62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    if number:
        raise ValueError("number does not fit the width")
    return "".join(reversed(chars))


def _from_b62(text: str) -> int:
    number = 0
    for char in text:
        number = number * 62 + ALPHABET.index(char)
    return number


def _tag(payload: bytes, secret: str) -> str:
    digest = hmac.new(secret.encode(), b"rsl1" + payload, hashlib.sha256).digest()
    return _b62(int.from_bytes(digest[:8], "big") % 62**TAG_CHARS, TAG_CHARS)


def make_code(message_id: str, index: int, secret: str) -> str:
    """The short code of link `index` (0-255) of message `message_id`."""
    if not 0 <= index < MAX_LINKS:
        raise ValueError(f"link index {index} out of range 0..{MAX_LINKS - 1}")
    payload = bytes.fromhex(message_key(message_id)) + bytes([index])
    return _b62(int.from_bytes(payload, "big"), PAYLOAD_CHARS) + _tag(payload, secret)


def parse_code(code: str, secret: str) -> LinkRef:
    """Verify `code` and decode it; raises InvalidCode when malformed or tampered with."""
    if not CODE_RE.fullmatch(code or ""):
        raise InvalidCode(f"malformed link code {code[:40]!r}")
    number = _from_b62(code[:PAYLOAD_CHARS])
    if number >= 1 << 72:
        raise InvalidCode("link code payload out of range")
    payload = number.to_bytes(9, "big")
    if not hmac.compare_digest(_tag(payload, secret), code[PAYLOAD_CHARS:]):
        raise InvalidCode("link code tag does not match")
    return LinkRef(payload[:8].hex(), payload[8])


def _trim(url: str) -> str:
    while url and url[-1] in TRAILING:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break  # a balanced parenthesis belongs to the URL (wiki-style paths)
        url = url[:-1]
    return url


def shorten(
    text: str, message_id: str, secret: str, base: str = DEFAULT_BASE
) -> tuple[str, list[str]]:
    """Replace every http(s) URL in `text` with a tracked short link.

    Returns (new text, original URLs in order); link i of the list has code
    `make_code(message_id, i, secret)`. URLs already under `{base}/c/` and URLs beyond
    the 256th stay unchanged. Deterministic for the same inputs.
    """
    base = base.rstrip("/")
    own_prefix = f"{base}/c/".lower()
    originals: list[str] = []
    out: list[str] = []
    pos = 0
    for match in URL_RE.finditer(text):
        url = _trim(match.group(0))
        if len(url) <= len("https://") or url.lower().startswith(own_prefix):
            continue
        if len(originals) >= MAX_LINKS:
            break
        start = match.start()
        out.append(text[pos:start])
        out.append(f"{base}/c/{make_code(message_id, len(originals), secret)}")
        originals.append(url)
        pos = start + len(url)
    out.append(text[pos:])
    return "".join(out), originals
