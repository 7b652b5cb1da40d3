"""The project's error taxonomy: every error says whether retrying can help.

Commands and workers catch `RassylkaError` once, at the command-line boundary
(`pipeline.cli.main`), and print `summary(exc)`: one or two lines saying what failed,
where (an address, a file) and what to do. Tracebacks are for `--debug` only.
"""

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
    """Rules, templates, routes, limits or settings are invalid.

    `problems` holds one line per problem, each naming its file (and rule or field);
    `hint` says what to do about them, when something better than "fix it" applies.
    """

    reason = "config_error"

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = problems
        self.hint = hint
        super().__init__("; ".join(problems))


class KafkaUnreachable(RetryableError):
    """No Kafka broker answered at the configured address within the start-up wait."""

    reason = "kafka_unreachable"

    def __init__(self, bootstrap: str, waited_s: float, detail: str = "") -> None:
        self.bootstrap = bootstrap
        self.waited_s = waited_s
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"Kafka is not reachable at {bootstrap}{why} — start it with `make kafka-up` "
            f"or set KAFKA_BOOTSTRAP"
        )


def summary(exc: RassylkaError, max_problems: int = 1) -> list[str]:
    """The one or two lines a person sees for `exc` at the command line."""
    if isinstance(exc, ConfigError) and exc.problems:
        shown = [_one_line(p) for p in exc.problems[:max_problems]]
        rest = len(exc.problems) - len(shown)
        first = "; ".join(shown) + (f" (and {rest} more)" if rest else "")
        return [first] + ([_one_line(exc.hint)] if exc.hint else [])
    return [_one_line(str(exc)) or type(exc).__name__]


def _one_line(text: str) -> str:
    return " ".join(text.split())
