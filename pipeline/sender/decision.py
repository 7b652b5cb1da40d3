"""The terminal negative decision every sender check can return."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reject:
    """A terminal negative decision: the request ends with this status and reason code.

    `status` is 'rejected' (the request itself is wrong), 'suppressed' (valid, but policy
    says not to send) or 'expired' (too late to send). `reason` is a stable snake_case code
    analysts group by; `detail` is for humans and may change freely.
    """

    status: str
    reason: str
    detail: str


def rejected(reason: str, detail: str) -> Reject:
    """A 'rejected' decision: the request can never be sent as it is."""
    return Reject("rejected", reason, detail)


def suppressed(reason: str, detail: str) -> Reject:
    """A 'suppressed' decision: a valid request that policy (consent, dedup, caps) stops."""
    return Reject("suppressed", reason, detail)


def expired(reason: str, detail: str) -> Reject:
    """An 'expired' decision: the request's send window has passed."""
    return Reject("expired", reason, detail)
