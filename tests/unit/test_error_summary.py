"""What a person sees for each project error at the command line: one or two lines."""

from __future__ import annotations

from pipeline.errors import ConfigError, KafkaUnreachable, RetryableError, summary


def test_kafka_unreachable_names_the_address_and_what_to_do() -> None:
    exc = KafkaUnreachable("127.0.0.1:29092", 8.0, "connection refused")
    assert exc.retryable
    [line] = summary(exc)
    assert "127.0.0.1:29092" in line and "make kafka-up" in line and "KAFKA_BOOTSTRAP" in line


def test_config_error_shows_the_first_problem_the_count_and_the_hint() -> None:
    exc = ConfigError(["config/rules.yaml: rules[0] (a): bad", "config/rules.yaml: rules[1] (b): bad"],
                      hint="run `rassylka rules validate`")
    assert summary(exc) == ["config/rules.yaml: rules[0] (a): bad (and 1 more)",
                            "run `rassylka rules validate`"]


def test_multi_line_messages_become_one_line() -> None:
    exc = ConfigError(["limits.yaml: not valid YAML: while parsing\n  in line 3\n    ^"])
    assert summary(exc) == ["limits.yaml: not valid YAML: while parsing in line 3 ^"]
    assert summary(RetryableError("down\nfor now")) == ["down for now"]
