"""The fast Go SMSC simulator (infra/smsc-bench, for the benchmark) behaves like smsc_sim.py.

* One SMPP script (our own `connectors.smpp_session`) runs against both simulators, and
  everything each one answers, logs, delivers and reports is compared after the parts
  that must differ (message ids, dates, process ids) are normalised.
* A real sender worker sends 300 requests through Kafka to the Go simulator: one submit
  and one receipt per request, none twice.
* Without Go, starting it fails with the make target to run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import smpp34
from sendkit import Simulator, make_request, one_receipt_per_part, outcomes, phone, publish_requests
from sendkit import sender as run_sender

from connectors.smpp_session import (
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    BIND_TRANSMITTER,
    DELIVER_SM,
    ENQUIRE_LINK,
    SUBMIT_SM,
    BindRequest,
    DataSm,
    Pdu,
    SmppSession,
)
from pipeline import fast_smsc
from pipeline.fast_smsc import start_fast_simulator
from pipeline.procs import start_simulator, stop
from pipeline.settings import Settings

QUERY_SM = 0x00000003
DATA_SM = 0x00000103
FLAGS = ("--receipt-delay-ms", "20-60", "--receipt-outcomes", "DELIVRD=1", "--seed", "7")


def submit_body(
    sm: bytes = b"Code 1234",
    *,
    src: bytes = b"SHOPRU",
    dst: bytes = b"79161234567",
    src_ton: int = 5,
    src_npi: int = 0,
    esm: int = 0,
    rd: int = 1,
    dc: int = 0,
    vp: bytes = b"",
    sm_len: int | None = None,
    tail: bytes = b"",
) -> bytes:
    """A submit_sm body built by hand (so that it can also be malformed)."""
    return (
        b"\x00"
        + bytes([src_ton, src_npi])
        + src
        + b"\x00"
        + bytes([1, 1])
        + dst
        + b"\x00"
        + bytes([esm, 0, 0])
        + b"\x00"
        + vp
        + b"\x00"
        + bytes([rd, 0, dc, 0])
        + bytes([len(sm) if sm_len is None else sm_len])
        + sm
        + tail
    )


def udh_parts(text: str, ref: int = 0x2A) -> list[bytes]:
    data = text.encode("utf-16-be")
    chunks = [data[i : i + 134] for i in range(0, len(data), 134)]
    return [bytes([5, 0, 3, ref, len(chunks), i + 1]) + c for i, c in enumerate(chunks)]


CASES: list[bytes] = [
    submit_body(),
    submit_body("Счёт INV-1 на 1 500 ₽ ждёт оплаты".encode("utf-16-be"), dc=8, dst=b"79161230001"),
    *(
        submit_body(p, esm=0x40, dc=8, dst=b"79161230002")
        for p in udh_parts("Уважаемый клиент! " * 12)
    ),
    submit_body(b"caf\xe9 \x00\x01\x7f\x80\xa0\xad\xffend" + b"x" * 30, dst=b"79161230003"),
    submit_body(
        b"\xd8\x3d\xde\x00\x00A\xdc\x00\xd8\x00\x00B\x04\x16\x00", dc=8, dst=b"79161230004"
    ),
    submit_body(b"\xd8\x00\x41", dc=8, dst=b"79161230005"),
    submit_body(b"no receipt", rd=0, dst=b"79161230006"),
    submit_body(b"failures only", rd=2, dst=b"79161230007"),
    submit_body(b"failures only, expired", rd=2, vp=b"200101000000000+", dst=b"79161230008"),
    submit_body(b"expired", vp=b"200101000000000+", dst=b"79161230009"),
    submit_body(b"absolute", vp=b"351231235959300-", dst=b"79161230010"),
    submit_body(b"quarters", vp=b"3512312359593 4+", dst=b"79161230011"),
    submit_body(b"negative quarters", vp=b"3512312359593-4+", dst=b"79161230012"),
    submit_body(b"relative", vp=b"000001020304000R", dst=b"79161230013"),
    submit_body(b"bad validity", vp=b"garbage", dst=b"79161230014"),
    submit_body(b"bad month", vp=b"351331235959000+", dst=b"79161230015"),
    submit_body(b"bad quarters", vp=b"351231235959049+", dst=b"79161230016"),
    submit_body(b"29 Feb", vp=b"290229000000000+", dst=b"79161230017"),
    submit_body(b"addresses", src=b'A"B\\C\xd0\x96\xff\xe2\x82Z', src_ton=5, dst=b"7916\tx"),
    submit_body(b"", dst=b"79161230018"),
    submit_body(b"\x09udh too long", esm=0x40, dst=b"79161230019"),
    submit_body(b"y" * 255, dst=b"79161230020"),
    submit_body(b"with tlvs", tail=b"\x02\x04\x00\x02\x00\x07\x04\x24\x00", dst=b"79161230021"),
    submit_body(b"cut short", sm_len=40),  # smpp34 cannot decode it: ESME_RSYSERR, not logged
    submit_body(b"x")[:5],
]


def http(method: str, url: str, body: dict[str, Any] | str | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def open_session(port: int, inbox: list[Pdu], answer: bool = True) -> SmppSession:
    """An unbound session that records every deliver_sm (answering ESME_ROK if `answer`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    def on_request(session: SmppSession, pdu: Pdu) -> None:
        inbox.append(pdu)
        if answer and pdu.command_id == DELIVER_SM:
            session.respond(pdu, 0, b"\x00")

    session = SmppSession(reader, writer, on_request, name="test")
    session.start()
    return session


def answer_of(pdu: Pdu) -> tuple[int, int, bytes]:
    return pdu.command_id, pdu.status, pdu.body


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def script(port: int, control: int) -> dict[str, Any]:
    """Everything a simulator answers to one fixed SMPP conversation."""
    base = f"http://127.0.0.1:{control}"
    out: dict[str, Any] = {}
    out["mo_unbound"] = http(
        "POST", f"{base}/mo", {"from": "+79161234567", "to": "SHOPRU", "text": "STOP"}
    )
    # A broken frame: generic_nack ESME_RINVCMDLEN with sequence 0, then the end.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">IIII", 8, SUBMIT_SM, 0, 5))
    out["bad_frame"] = await asyncio.wait_for(reader.read(100), 5)
    out["bad_frame_eof"] = await asyncio.wait_for(reader.read(100), 5)
    writer.close()

    inbox: list[Pdu] = []
    trx = await open_session(port, inbox)
    out["unbound"] = [
        answer_of(await trx.call(c, b))
        for c, b in ((SUBMIT_SM, submit_body()), (ENQUIRE_LINK, b""), (DATA_SM, b"\x00"))
    ]
    bind = BindRequest("rassylka", "secret", "").encode()
    out["bind"] = [
        answer_of(await trx.call(BIND_TRANSCEIVER, bind)),
        answer_of(await trx.call(BIND_TRANSCEIVER, bind)),
        answer_of(await trx.call(BIND_TRANSMITTER, b"x\x00")),
    ]
    out["bound_other"] = [
        answer_of(await trx.call(c, b))
        for c, b in (
            (QUERY_SM, b"1\x00\x00\x00\x00"),
            (DELIVER_SM, submit_body()),
            (ENQUIRE_LINK, b""),
        )
    ]
    answers = await asyncio.gather(*(trx.call(SUBMIT_SM, body) for body in CASES))
    out["submit_answers"] = [(a.status, len(a.body)) for a in answers]
    ids = [a.body.rstrip(b"\x00").decode() for a in answers if a.status == 0]
    out["receipts_expected"] = expected = (
        sum(
            1
            for body, a in zip(CASES, answers, strict=True)
            if a.status == 0
            and smpp34.decode(Pdu(SUBMIT_SM, 0, 1, body).encode()).registered_delivery & 3 == 1
        )
        + 1
    )  # + the 'failures only, expired' one
    await until(lambda: sum(1 for p in inbox if p.command_id == DELIVER_SM) >= expected)

    # A transmitter of the same system id submits: the receipt comes on the transceiver.
    tx_inbox: list[Pdu] = []
    tx = await open_session(port, tx_inbox)
    out["tx_bind"] = answer_of(await tx.call(BIND_TRANSMITTER, bind))
    answer = await tx.call(SUBMIT_SM, submit_body(b"from tx", dst=b"79161230030"))
    ids.append(answer.body.rstrip(b"\x00").decode())
    await until(lambda: sum(1 for p in inbox if p.command_id == DELIVER_SM) >= expected + 1)
    out["tx_inbox"] = len(tx_inbox)
    # A receiver cannot submit.
    rx = await open_session(port, [])
    out["rx"] = [
        answer_of(await rx.call(BIND_RECEIVER, BindRequest("other", "", "").encode())),
        answer_of(await rx.call(SUBMIT_SM, submit_body())),
    ]

    # Store and forward: a receipt left unanswered goes out again, byte for byte, on the
    # next session of its system id once the first one is gone.
    lost_inbox: list[Pdu] = []
    lost = await open_session(port, lost_inbox, answer=False)
    await lost.call(BIND_TRANSCEIVER, BindRequest("sys2", "pw", "").encode())
    answer = await lost.call(SUBMIT_SM, submit_body(b"unanswered", dst=b"79161230031"))
    ids.append(answer.body.rstrip(b"\x00").decode())
    await until(lambda: any(p.command_id == DELIVER_SM for p in lost_inbox))
    lost.close()
    await asyncio.sleep(0.2)
    again_inbox: list[Pdu] = []
    again = await open_session(port, again_inbox)
    await again.call(BIND_RECEIVER, BindRequest("sys2", "pw", "").encode())
    await until(lambda: bool(again_inbox))
    out["redelivered_same_bytes"] = again_inbox[0].body == lost_inbox[0].body

    # MO through the control channel, to the first bound session that can receive.
    out["mo"] = [
        http("POST", f"{base}/mo", {"from": "+79161234567", "to": "SHOPRU", "text": "Стоп!"})[0],
        http(
            "POST", f"{base}/mo", {"from": "79161234567", "to": "Shop", "text": "STOP " + "x" * 300}
        )[0],
        http("POST", f"{base}/mo", {"from": "x"}),
        http("POST", f"{base}/mo", "not json"),
    ]
    mo_count = expected + 1 + 2
    await until(lambda: sum(1 for p in inbox if p.command_id == DELIVER_SM) >= mo_count)
    await asyncio.sleep(0.3)
    out["health"] = http("GET", f"{base}/health")
    status, submits = http("GET", f"{base}/submits?since=3")
    out["submits_endpoint"] = (
        status,
        submits["total"],
        len(submits["submits"]),
        submits["submits"][0]["destination"],
    )
    deliveries = [p for p in inbox if p.command_id == DELIVER_SM]
    out["deliveries"] = deliveries
    out["ids"] = ids
    await tx.unbind()
    await rx.unbind()
    await again.unbind()
    out["trx"] = trx
    return out


def normalise(run: dict[str, Any], log_lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace what legitimately differs between two simulators (ids, dates, pids)."""
    names = {mid: f"ID{i}" for i, mid in enumerate(run.pop("ids"))}
    deliveries: list[Pdu] = run.pop("deliveries")
    run.pop("trx")
    mo_ids = []
    bodies: dict[str, bytes] = {}
    for pdu in deliveries:
        decoded = smpp34.decode(pdu.encode())
        tlvs = {t.tag: t.value for t in decoded.tlvs}
        mid = tlvs[0x001E].rstrip(b"\x00").decode()
        if mid not in names:
            names[mid] = f"MO{len(mo_ids)}"
            mo_ids.append(mid)
        body = pdu.body.replace(mid.encode(), b"#" * len(mid))
        body = re.sub(rb"(submit date:|done date:)\d{10}", rb"\1DDDDDDDDDD", body)
        bodies[names[mid]] = body
    run["deliveries"] = bodies
    run["log"] = []
    for line in log_lines:
        line = dict(line)
        at = line.pop("at_ms")
        assert abs(at - time.time() * 1000) < 120_000
        line["session_id"] = re.sub(r"^sim-\d+-", "sim-PID-", line["session_id"])
        if line["message_id"] is not None:
            line["message_id"] = names[line["message_id"]]
        if line["validity_period"].endswith("R"):
            line["valid_until_ms"] -= at
        run["log"].append(line)
    return run


def read_log(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = (
            [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if path.exists()
            else []
        )
        if len(lines) >= count or time.monotonic() > deadline:
            return lines


def converse(start: Any, tmp_path: Path, name: str) -> dict[str, Any]:
    folder = tmp_path / name
    folder.mkdir()
    log_path = folder / "submits.jsonl"
    proc, port, control = start(folder, "--log", str(log_path), *FLAGS)
    try:
        run = asyncio.run(_converse(port, control, proc))
    finally:
        stop(proc)
    raw_log = log_path.read_text()
    assert raw_log.endswith("\n")
    lines = read_log(log_path, run["health"][1]["submits"])
    run["raw_first_line_keys"] = re.findall(r'"(\w+)": ', raw_log.splitlines()[0])
    return normalise(run, lines)


async def _converse(port: int, control: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    run = await script(port, control)
    # SIGTERM: the simulator unbinds the sessions still bound, then exits.
    trx: SmppSession = run["trx"]
    proc.terminate()
    await asyncio.wait_for(trx.wait_closed(), 5)
    run["exit"] = await asyncio.to_thread(proc.wait, 10)
    return run


def test_go_simulator_answers_logs_and_delivers_like_smsc_sim(tmp_path: Path) -> None:
    python = converse(start_simulator, tmp_path, "python")
    go = converse(start_fast_simulator, tmp_path, "go")
    assert python["submit_answers"][0] == (0, 18)  # sanity: a 17-digit hex id
    assert python["health"][1]["session_lost"] == 1 and python["redelivered_same_bytes"]
    for key in python:
        assert go[key] == python[key], key
    assert go == python


class RawEsme:
    """A bare SMPP peer on one connection: writes PDUs, reads them in wire order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.seq = reader, writer, 0

    @classmethod
    async def open(cls, port: int) -> RawEsme:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, command_id: int, body: bytes = b"", status: int = 0, seq: int = 0) -> int:
        if not seq:
            self.seq += 1
            seq = self.seq
        self.writer.write(Pdu(command_id, status, seq, body).encode())
        return seq

    async def read(self, timeout: float = 5.0) -> Pdu | None:
        """The next PDU, or None when none comes within `timeout`."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(16), timeout)
        except TimeoutError:
            return None
        length, command_id, status, seq = struct.unpack(">IIII", head)
        return Pdu(command_id, status, seq, await self.reader.readexactly(length - 16))

    async def bind(self, system_id: str = "rassylka", command_id: int = BIND_TRANSCEIVER) -> Pdu:
        self.send(command_id, BindRequest(system_id, "secret", "").encode())
        answer = await self.read()
        assert answer is not None
        return answer

    def close(self) -> None:
        self.writer.close()


def kind(pdu: Pdu | None) -> tuple[str, int] | None:
    names = {0x80000004: "submit_sm_resp", DELIVER_SM: "deliver_sm", 0x80000000: "generic_nack"}
    return None if pdu is None else (names.get(pdu.command_id, hex(pdu.command_id)), pdu.status)


async def flag_scenarios(start: Any, folder: Path) -> dict[str, Any]:
    """What each behaviour flag does, in terms that do not depend on random draws."""
    out: dict[str, Any] = {}
    opened: list[RawEsme] = []

    async def with_sim(name: str, flags: tuple[str, ...], body: Any) -> None:
        (folder / name).mkdir(parents=True)
        log_path = folder / name / "submits.jsonl"
        proc, port, control = start(folder / name, "--log", str(log_path), *flags)
        try:
            out[name] = await body(port, control)
        finally:
            for esme in opened:
                esme.close()
                await esme.writer.wait_closed()
            opened.clear()
            stop(proc)
        lines = read_log(log_path, 0)  # complete: written out at exit
        out[name]["log"] = [(x["status"], x["dropped"], x["message_id"] is None) for x in lines]

    async def connect_raw(port: int) -> RawEsme:
        opened.append(await RawEsme.open(port))
        return opened[-1]

    async def failing(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        t0 = time.monotonic()
        esme.send(SUBMIT_SM, submit_body())
        answer = await esme.read()
        late = time.monotonic() - t0 >= 0.14
        return {
            "answer": (kind(answer), answer.body if answer else None),
            "late": late,
            "then": kind(await esme.read(0.4)),
        }

    async def dropped(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        t0 = time.monotonic()
        esme.send(SUBMIT_SM, submit_body())
        first = await esme.read()
        assert first is not None
        esme.send(first.command_id | 0x80000000, b"\x00", seq=first.sequence)
        second = await esme.read()
        return {"order": [kind(first), kind(second)], "late": time.monotonic() - t0 >= 0.28}

    async def receipt_first(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        for _ in range(3):
            esme.send(SUBMIT_SM, submit_body())
        return {"order": [kind(await esme.read()) for _ in range(6)]}

    async def throttled(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        t0 = time.monotonic()
        for _ in range(4):
            esme.send(SUBMIT_SM, submit_body(rd=0))
        got = []
        for _ in range(4):
            pdu = await esme.read()
            got.append((kind(pdu), pdu.sequence if pdu else None, time.monotonic() - t0 >= 0.14))
        return {"answers": got}

    async def redelivered(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        esme.send(SUBMIT_SM, submit_body(dst=b"79161230100"))
        esme.send(SUBMIT_SM, submit_body(dst=b"79161230101"))
        seen: list[Any] = []
        bodies: dict[bytes, list[bytes]] = {}
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            pdu = await esme.read(0.5)
            if pdu is None or pdu.command_id != DELIVER_SM:
                continue
            who = b"101" if b"79161230101" in pdu.body else b"100"
            bodies.setdefault(who, []).append(pdu.body)
            attempt = len(bodies[who])
            seen.append((who.decode(), attempt))
            if who == b"101":  # never: given up at once
                esme.send(DELIVER_SM | 0x80000000, b"\x00", status=0x65, seq=pdu.sequence)
            elif attempt == 2:  # 1st unanswered (timeout), 2nd refused, 3rd taken
                esme.send(DELIVER_SM | 0x80000000, b"\x00", status=0x64, seq=pdu.sequence)
            elif attempt == 3:
                esme.send(DELIVER_SM | 0x80000000, b"\x00", seq=pdu.sequence)
        health = http("GET", f"http://127.0.0.1:{control}/health")[1]
        return {"seen": sorted(seen), "same_bytes": len(set(bodies[b"100"])) == 1, "health": health}

    async def windowed(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        for i in range(5):
            esme.send(SUBMIT_SM, submit_body(dst=f"7916123020{i}".encode()))
        got = [kind(await esme.read()) for _ in range(5)]
        held = [pdu for _ in range(3) if (pdu := await esme.read(0.4)) is not None]
        waiting = http("GET", f"http://127.0.0.1:{control}/health")[1]["waiting"]
        for pdu in held:
            esme.send(DELIVER_SM | 0x80000000, b"\x00", seq=pdu.sequence)
        more = [kind(await esme.read(0.4)) for _ in range(3)]
        return {"answers": got, "held": [kind(p) for p in held], "waiting": waiting, "more": more}

    async def refusing(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        answer = await esme.bind()
        status, submits = http("GET", f"http://127.0.0.1:{control}/submits")
        return {
            "bind": (answer.command_id, answer.status, answer.body),
            "submits": submits,
            "enquire": (esme.send(ENQUIRE_LINK), kind(await esme.read())),
        }

    async def kept(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        for i in range(4):
            esme.send(SUBMIT_SM, submit_body(rd=0, dst=f"7916123030{i}".encode()))
        for _ in range(4):
            await esme.read()
        status, submits = http("GET", f"http://127.0.0.1:{control}/submits?since=1")
        return {"total": submits["total"], "kept": [x["destination"] for x in submits["submits"]]}

    async def any_bind(port: int, control: int) -> dict[str, Any]:
        a, b = await connect_raw(port), await connect_raw(port)
        await a.bind()
        await b.bind()
        for i in range(4):
            a.send(SUBMIT_SM, submit_body(dst=f"7916123040{i}".encode()))
        got: dict[str, list[Any]] = {"a": [], "b": []}
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            for name, esme in (("a", a), ("b", b)):
                if (pdu := await esme.read(0.05)) is not None:
                    got[name].append(kind(pdu))
        return {"a": sorted(got["a"]), "b": sorted(got["b"])}

    async def decimal_ids(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        esme.send(SUBMIT_SM, submit_body())
        first, second = await esme.read(), await esme.read()
        answer, receipt = sorted((p for p in (first, second) if p is not None),
                                 key=lambda p: p.command_id != 0x80000004)
        hex_id = answer.body.rstrip(b"\x00").decode()
        decimal = str(int(hex_id, 16)).encode()
        tlv = (0x001E).to_bytes(2, "big") + (len(decimal) + 1).to_bytes(2, "big") + decimal + b"\x00"
        return {"kinds": [kind(answer), kind(receipt)], "text": b"id:" + decimal + b" " in receipt.body,
                "tlv": receipt.body.endswith(tlv) or tlv in receipt.body,
                "hex_answer": any(c in "abcdef" for c in hex_id) or hex_id != decimal.decode()}

    async def no_transceiver(port: int, control: int) -> dict[str, Any]:
        trx, tx, rx = await connect_raw(port), await connect_raw(port), await connect_raw(port)
        refused = await trx.bind()
        binds = [kind(await tx.bind(command_id=BIND_TRANSMITTER)),
                 kind(await rx.bind(command_id=BIND_RECEIVER))]
        tx.send(SUBMIT_SM, submit_body())
        return {"trx": (hex(refused.command_id), refused.status), "binds": binds,
                "tx": kind(await tx.read()), "rx": kind(await rx.read()),
                "tx_then": kind(await tx.read(0.3))}

    async def data_sm(port: int, control: int) -> dict[str, Any]:
        esme = await connect_raw(port)
        await esme.bind()
        esme.send(SUBMIT_SM, submit_body())
        answer, receipt = await esme.read(), await esme.read()
        assert answer is not None and receipt is not None
        fields = DataSm.parse(receipt.body)
        tlvs = {t.tag: t.value for t in fields.tlvs}
        esme.send(receipt.command_id | 0x80000000, b"\x00", seq=receipt.sequence)
        return {"command": hex(receipt.command_id), "esm_class": fields.esm_class,
                "id": tlvs[0x001E] == answer.body,
                "text": tlvs[0x0424].startswith(b"id:" + answer.body.rstrip(b"\x00") + b" sub:001"),
                "state": list(tlvs[0x0427]), "then": kind(await esme.read(0.4))}

    await with_sim("any_bind", ("--receipt-delay-ms", "10", "--deliver-any-bind"), any_bind)
    await with_sim("data_sm", ("--receipt-delay-ms", "10", "--receipts-as-data-sm",
                               "--receipt-outcomes", "DELIVRD=1"), data_sm)
    await with_sim("no_transceiver", ("--receipt-delay-ms", "10", "--no-transceiver"),
                   no_transceiver)
    await with_sim("decimal_ids", ("--receipt-delay-ms", "10", "--receipt-ids-decimal"),
                   decimal_ids)
    await with_sim("failing", ("--failure-rate", "1", "--latency-ms", "150"), failing)
    await with_sim(
        "dropped",
        ("--drop-response-rate", "1", "--drop-hold-ms", "300", "--receipt-delay-ms", "10"),
        dropped,
    )
    await with_sim("receipt_first", ("--receipt-before-response", "1"), receipt_first)
    await with_sim("throttled", ("--throttle-above-per-s", "5", "--latency-ms", "150"), throttled)
    await with_sim(
        "redelivered",
        ("--receipt-delay-ms", "10", "--deliver-timeout-s", "0.3", "--redeliver-s", "0.2"),
        redelivered,
    )
    await with_sim("windowed", ("--receipt-delay-ms", "10", "--deliver-window", "2"), windowed)
    await with_sim("refusing", ("--refuse-binds", "0x0D"), refusing)
    await with_sim("kept", ("--keep-submits", "2"), kept)
    return out


def test_go_simulator_flags_behave_like_smsc_sim(tmp_path: Path) -> None:
    python = asyncio.run(flag_scenarios(start_simulator, tmp_path / "python"))
    go = asyncio.run(flag_scenarios(start_fast_simulator, tmp_path / "go"))
    assert python["redelivered"]["seen"] == [("100", 1), ("100", 2), ("100", 3), ("101", 1)]
    assert python["throttled"]["answers"][0][1] == 3  # throttled ones (seq 3-5) answered first
    # receipts round-robin over both binds, not only on the one that submitted
    assert python["any_bind"]["b"] == [("deliver_sm", 0)] * 2
    assert python["data_sm"] | {"log": None} == {
        "command": "0x103", "esm_class": 4, "id": True, "text": True, "state": [2], "then": None,
        "log": None}
    # bind_transceiver refused as an unknown command; transmitter + receiver work
    assert python["no_transceiver"]["trx"] == ("0x80000000", 3)
    assert python["no_transceiver"]["rx"] == ("deliver_sm", 0)
    # the receipt names the message by its answered (hex) id in decimal, in text and TLV
    assert python["decimal_ids"] | {"log": None} == {
        "kinds": [("submit_sm_resp", 0), ("deliver_sm", 0)], "text": True, "tlv": True,
        "hex_answer": True, "log": None}
    for key in python:
        assert go[key] == python[key], key


def test_sender_sends_300_requests_through_the_go_simulator(ns: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "submits.jsonl"
    proc, port, control = start_fast_simulator(
        tmp_path, "--log", str(log_path), "--receipt-delay-ms", "20-100", "--seed", "3"
    )
    sim = Simulator(port, control, log_path, proc)
    requests = [make_request(phone=phone(7000 + i), text=f"Код {i}: 1234") for i in range(300)]
    try:
        with run_sender(ns, sim, tmp_path, RASSYLKA_RATE_PER_BIND="2000"):
            publish_requests(ns, requests)
            got = outcomes(ns, len(requests), timeout=120)
            read_log(log_path, len(requests))  # flushed every 50 ms
            states = one_receipt_per_part(ns, sim, timeout=90)
    finally:
        stop(proc)
    assert all(o["status"] == "submitted" for o in got.values())
    submits = sim.submits()
    accepted = Counter(s["destination"] for s in submits if s["status"] == 0)
    assert accepted == Counter(r["phone"][1:] for r in requests), "one submit per request"
    assert len(submits) == len(requests)
    ids = {mid for o in got.values() for mid in o["gateway_message_ids"]}
    assert ids == {s["message_id"] for s in submits}
    assert sum(states.values()) == len(requests), states


def test_without_go_it_says_which_make_target_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "bin"  # bash and what build.sh needs, but no go
    tools.mkdir()
    for tool in ("bash", "env", "dirname"):
        found = next(
            Path(d) / tool
            for d in os.environ["PATH"].split(os.pathsep)
            if (Path(d) / tool).exists()
        )
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("SMSC_BENCH_BIN", str(tmp_path / "not-built" / "smsc-bench"))
    with pytest.raises(RuntimeError, match="run `make smsc-bench`"):
        start_fast_simulator(tmp_path)
    assert fast_smsc.MAKE_TARGET == "make smsc-bench"
    assert os.access(fast_smsc.BUILD_SCRIPT, os.X_OK)
