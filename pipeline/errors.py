"""The project's error taxonomy: every error says whether retrying can help."""

from __future__ import annotations


class RassylkaError(Exception):
    """Base of every error the project raises on purpose."""

    reason = "error"
    retryable = False


class PermanentError(RassylkaError):
    """Retrying the same input gives the same failure: dead-letter or reject it."""

    retryable = False


class RetryableError(RassylkaError):
    """A dependency is down or busy: back off and try again; never drop the input."""

    retryable = True


class ConfigError(PermanentError):
    """Rules, templates, routes or limits in `config/` are invalid."""

    reason = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))
