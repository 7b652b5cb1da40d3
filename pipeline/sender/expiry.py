"""Expiry and scheduling: is it too late to send this request, or too early?

`Hold` lives here because it is the common "not yet" decision: a scheduled send time and
the recipient's quiet hours both answer with one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.sender.decision import Reject, expired


@dataclass(frozen=True, slots=True)
class Hold:
    """Not now: try this request again at `until_ms` (epoch ms). Not a terminal outcome.

    `reason` is a stable code ('scheduled', 'quiet_hours') the agent can count holds by.
    """

    until_ms: int
    reason: str


def _field(request: Any, name: str) -> Any:
    """`request.name` for a record object, `request[name]` for a decoded Avro dict."""
    if isinstance(request, Mapping):
        return request.get(name)
    return getattr(request, name, None)


def check_expiry(request: Any, now_ms: int) -> Reject | None:
    """Expired 'ttl_expired' when `now_ms` is past the request's `expires_at_ms`, else None.

    Called before anything else costs work, and again whenever a hold ends. A request is
    still sendable at exactly `expires_at_ms`.
    """
    expires_at_ms = _field(request, "expires_at_ms")
    if expires_at_ms is not None and now_ms > expires_at_ms:
        return expired(
            "ttl_expired", f"expired at {expires_at_ms}, {now_ms - expires_at_ms} ms ago"
        )
    return None


def check_schedule(request: Any, now_ms: int) -> Hold | None:
    """Hold 'scheduled' until `send_at_ms` when that is still in the future, else None.

    A null `send_at_ms` means "now"; a send time equal to `now_ms` is due.
    """
    send_at_ms = _field(request, "send_at_ms")
    if send_at_ms is not None and send_at_ms > now_ms:
        return Hold(send_at_ms, "scheduled")
    return None


def check_hold(request: Any, hold: Hold) -> Reject | None:
    """Expired 'expires_during_hold' when the request would expire before `hold` ends.

    Called on any `Hold` (schedule, quiet hours): waiting for a moment after the
    request's `expires_at_ms` would only end in 'ttl_expired' later, so end it now.
    """
    expires_at_ms = _field(request, "expires_at_ms")
    if expires_at_ms is not None and hold.until_ms > expires_at_ms:
        return expired(
            "expires_during_hold",
            f"{hold.reason} hold until {hold.until_ms} ends after expiry at {expires_at_ms}",
        )
    return None
