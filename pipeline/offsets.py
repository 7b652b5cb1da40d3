"""Reset a stage's consumer group: where each of its input partitions is read from next.

`rassylka reset-offsets --stage router --to-earliest` makes the router route every
business event still on its topics again (a replay: the sender's dedup ledger suppresses
the requests it has already seen, so no SMS goes twice). It is the supported way because
a reset has three traps, each met on the real broker:

* the broker applies a reset only to a group with no member. While any router runs (or,
  for `broker_session_timeout` = 10 s, after one was SIGKILLed) it rejects every
  partition with UNKNOWN_MEMBER_ID — and the AdminClient call still *succeeds*: the
  errors are only on the returned partitions, so a script that does not read them
  believes it reset the group while nothing moved;
* a reset must name every partition of every input topic, not only those the group has
  committed (what `kafka-consumer-groups --all-topics` resets);
* the profiles topic is not an event stream: re-reading it from the start would put old
  profile versions back into the router's table while events are routed, so it is left
  where it is (the table is restored from its changelog anyway).

So: wait (bounded) for the group to be empty, reset every partition of every event topic
to its log-start (or end) offset, check each partition's answer, read the offsets back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import typer
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline import topics
from pipeline.errors import PermanentError, RetryableError
from pipeline.settings import Settings

# The catalog topics each stage's group may be reset on, and the default set.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {"router": tuple(topics.EVENT_TOPICS)}

# Group states in which the broker accepts offsets from outside the group.
_INACTIVE = {"EMPTY", "DEAD"}
# Answers of a broker (or group coordinator) that is still starting up.
_SETTLING = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
             KafkaError.NOT_COORDINATOR, KafkaError._TIMED_OUT, KafkaError.LEADER_NOT_AVAILABLE,
             KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.NOT_LEADER_FOR_PARTITION}


class GroupNotEmpty(RetryableError):
    """The stage's group still has members: stop every worker of the stage first."""

    reason = "group_not_empty"

    def __init__(self, group: str, state: str, members: list[str], waited_s: float) -> None:
        self.group = group
        self.members = members
        shown = ", ".join(members[:5]) + (f" and {len(members) - 5} more" if len(members) > 5 else "")
        super().__init__(
            f"consumer group {group} is {state.lower()} with {len(members)} member(s) "
            f"({shown}) after waiting {waited_s:.0f} s: stop every worker of the stage "
            f"(a killed one leaves after its 10 s session) and run the reset again"
        )


class ResetNotApplied(RetryableError):
    """The broker refused the new offsets for some partitions, or they did not read back."""

    reason = "reset_not_applied"


class UnknownInput(PermanentError):
    """A topic named for the reset is not an input of the stage, or is not in the cluster."""

    reason = "unknown_input"


@dataclass(frozen=True)
class PartitionReset:
    """One input partition: its committed offset before, the new one, and its end offset."""

    topic: str
    partition: int
    before: int | None  # None: the group had never committed this partition
    after: int
    end: int

    @property
    def replay(self) -> int:
        """Messages the stage will read (again) from `after` to the partition's end."""
        return self.end - self.after


def group_of(settings: Settings, stage: str) -> str:
    """The consumer group of `stage` (Faust stages use `<app_id>-<stage>`)."""
    return f"{settings.app_id}-{stage}"


def wait_until_empty(admin: AdminClient, group: str, wait_s: float) -> None:
    """Return once `group` has no member; GroupNotEmpty after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=15)
        state = desc.state.name
        if state in _INACTIVE and not desc.members:
            return
        if time.monotonic() >= deadline:
            members = [f"{m.client_id}@{m.host}" for m in desc.members]
            raise GroupNotEmpty(group, state, members, wait_s)
        time.sleep(0.5)


def plan(settings: Settings, stage: str, to_earliest: bool = True,
         names: list[str] | None = None, admin: AdminClient | None = None) -> list[PartitionReset]:
    """Every partition of the stage's input topics (`names`, catalog names; default all of
    them) with its committed offset and the offset a reset would set. Changes nothing."""
    admin = admin or AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    allowed = STAGE_INPUTS[stage]
    wanted = list(names or allowed)
    strangers = [n for n in wanted if n not in allowed]
    if strangers:
        raise UnknownInput(f"{', '.join(strangers)}: not reset by this command for the "
                           f"{stage}; its inputs are {', '.join(allowed)}")
    meta = admin.list_topics(timeout=15)
    tps: list[TopicPartition] = []
    for name in wanted:
        full = settings.topic(name)
        found = meta.topics.get(full)
        if found is None or found.error is not None or not found.partitions:
            raise UnknownInput(f"topic {full} is not on {settings.kafka_bootstrap}: "
                               f"run `rassylka topics create`")
        tps += [TopicPartition(full, p) for p in sorted(found.partitions)]
    earliest = _offsets(admin, tps, OffsetSpec.earliest())
    end = _offsets(admin, tps, OffsetSpec.latest())
    committed = committed_offsets(settings.kafka_bootstrap, group_of(settings, stage), tps)
    out = []
    for tp in tps:
        key = (tp.topic, tp.partition)
        target = earliest[key] if to_earliest else end[key]
        out.append(PartitionReset(tp.topic, tp.partition, committed[key], target, end[key]))
    return out


def reset(settings: Settings, stage: str, to_earliest: bool = True, names: list[str] | None = None,
          wait_s: float = 15.0) -> list[PartitionReset]:
    """Reset `stage`'s group on every partition of its input topics; returns what was done.

    Called with every worker of the stage stopped. Raises GroupNotEmpty when the group
    still has a member after `wait_s` seconds, ResetNotApplied when the broker refused
    any partition or an offset does not read back as set (nothing is half-done silently).
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    group = group_of(settings, stage)
    wait_until_empty(admin, group, wait_s)
    todo = plan(settings, stage, to_earliest, names, admin)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(r.topic, r.partition, r.after) for r in todo])
    answer = admin.alter_consumer_group_offsets([request])[group].result(timeout=30)
    # A refusal comes back per partition, not as an exception (UNKNOWN_MEMBER_ID when a
    # worker joined after the check above).
    refused = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}"
               for tp in answer.topic_partitions if tp.error is not None]
    if refused:
        raise ResetNotApplied(f"the broker refused the reset of {group} for {len(refused)} "
                              f"partition(s): {'; '.join(refused[:4])} — is a worker of the "
                              f"stage running? Stop it and reset again")
    now = committed_offsets(settings.kafka_bootstrap, group,
                            [TopicPartition(r.topic, r.partition) for r in todo])
    wrong = [f"{r.topic}[{r.partition}] at {now[(r.topic, r.partition)]}, not {r.after}"
             for r in todo if now[(r.topic, r.partition)] != r.after]
    if wrong:
        raise ResetNotApplied(f"offsets of {group} did not read back as set: "
                              f"{'; '.join(wrong[:4])} — did a worker start meanwhile?")
    return todo


def committed_offsets(bootstrap: str, group: str,
                      tps: list[TopicPartition]) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition (None where it never committed).

    Asked through a consumer of the group that never joins it, not the AdminClient: on a
    broker whose group coordinator is still loading, librdkafka's admin OffsetFetch can
    crash the process (a NULL group handle on NOT_COORDINATOR)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(t.topic, t.partition) for t in tps], timeout=30)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): (None if tp.offset < 0 else tp.offset) for tp in got}


def wait_committed_to_end(settings: Settings, stage: str, name: str, timeout: float) -> bool:
    """Wait (at most `timeout` s) until `stage`'s group has committed every partition of
    catalog topic `name` up to its current end; True when it has. For the router and the
    profiles topic: every profile published so far was read (and checked) by a router.

    Asks through a consumer that never joins the group (its committed offsets and the
    partitions' ends), retrying the answers of a broker still starting up."""
    full = settings.topic(name)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": group_of(settings, stage), "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    ends: dict[int, int] | None = None
    try:
        while True:
            try:
                if ends is None:
                    parts = consumer.list_topics(full, timeout=10).topics[full].partitions
                    ends = {p: consumer.get_watermark_offsets(TopicPartition(full, p),
                                                              timeout=10)[1] for p in parts}
                got = consumer.committed([TopicPartition(full, p) for p in ends], timeout=10)
                if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in got):
                    return True
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if err is not None and not err.retriable() and err.code() not in _SETTLING:
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
    finally:
        consumer.close()


def _offsets(admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
    futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=15)
    return {(tp.topic, tp.partition): fut.result(timeout=30).offset for tp, fut in futures.items()}


def reset_offsets_command(
    stage: str = typer.Option("router", help="Stage whose consumer group to reset (router)."),
    to_earliest: bool = typer.Option(True, "--to-earliest/--to-latest",
                                     help="Replay everything still on the topics, or skip to "
                                          "their end."),
    topic: list[str] = typer.Option(None, "--topic",
                                    help="Only this input topic (catalog name, repeatable); "
                                         "default: every event topic."),
    wait: float = typer.Option(15.0, help="Seconds to wait for the group to become empty."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, change nothing."),
) -> None:
    """Reset a stage's consumer group on every partition of its input topics.

    Stop every worker of the stage first; the command refuses while the group has members.
    """
    from rich.console import Console
    from rich.table import Table

    if stage not in STAGE_INPUTS:
        raise typer.BadParameter(f"one of {', '.join(STAGE_INPUTS)}", param_hint="--stage")
    settings = Settings.from_env()
    if dry_run:
        done = plan(settings, stage, to_earliest, topic or None)
    else:
        done = reset(settings, stage, to_earliest, topic or None, wait)
    table = Table(title=f"{'Plan for' if dry_run else 'Reset'} {group_of(settings, stage)} "
                        f"to {'earliest' if to_earliest else 'latest'}")
    for column in ("topic", "partition", "committed before", "reset to", "end", "to read"):
        table.add_column(column)
    for r in done:
        table.add_row(r.topic, str(r.partition), "-" if r.before is None else str(r.before),
                      str(r.after), str(r.end), str(r.replay))
    console = Console(width=160)
    console.print(table)
    console.print(f"{sum(r.replay for r in done)} message(s) on {len(done)} partition(s) "
                  f"{'would be' if dry_run else 'will be'} read by the next {stage} start",
                  highlight=False)
