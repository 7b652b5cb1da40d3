"""SMPP session pieces: framing, simple PDU bodies, SMPP time, and one session over a socket."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime

import pytest
import smpp34

from connectors.smpp_session import (
    BIND_TRANSCEIVER,
    DELIVER_SM,
    ENQUIRE_LINK,
    GENERIC_NACK,
    UNBIND,
    BindRequest,
    DataSm,
    FramingError,
    Pdu,
    SessionClosed,
    SmppSession,
    absolute_time,
    parse_time,
    pdu_body,
    read_cstring,
    take_pdus,
)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


# ── framing ──────────────────────────────────────────────────────────────────


def test_pdu_encodes_the_smpp_header() -> None:
    raw = Pdu(ENQUIRE_LINK, 0, 7).encode()
    assert raw == struct.pack(">IIII", 16, 0x15, 0, 7)
    raw = Pdu(0x80000004, 0, 9, b"abc\x00").encode()
    assert struct.unpack(">IIII", raw[:16]) == (20, 0x80000004, 0, 9)
    assert Pdu(0x80000004, 0, 9).is_response and not Pdu(DELIVER_SM, 0, 1).is_response


def test_take_pdus_cuts_complete_pdus_and_keeps_the_rest() -> None:
    a = Pdu(ENQUIRE_LINK, 0, 1).encode()
    b = Pdu(0x80000004, 0, 2, b"id-1\x00").encode()
    buffer = bytearray(a + b + b[:10])
    assert take_pdus(buffer) == [Pdu(ENQUIRE_LINK, 0, 1), Pdu(0x80000004, 0, 2, b"id-1\x00")]
    assert bytes(buffer) == b[:10]
    assert take_pdus(buffer) == []  # still incomplete
    buffer += b[10:]
    assert take_pdus(buffer) == [Pdu(0x80000004, 0, 2, b"id-1\x00")]
    assert buffer == bytearray()


def test_take_pdus_byte_by_byte() -> None:
    stream = b"".join(Pdu(DELIVER_SM, 0, n, bytes(n)).encode() for n in range(1, 6))
    buffer, got = bytearray(), []
    for byte in stream:
        buffer.append(byte)
        got += take_pdus(buffer)
    assert [p.sequence for p in got] == [1, 2, 3, 4, 5]
    assert [len(p.body) for p in got] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("length", [0, 15, 1 << 20])
def test_take_pdus_refuses_a_broken_length(length: int) -> None:
    with pytest.raises(FramingError):
        take_pdus(bytearray(struct.pack(">IIII", length, 4, 0, 1)))


def test_smpp34_bodies_fit_our_framing() -> None:
    encoded = smpp34.SubmitSm("Shop", "79161234567", b"hi", validity_period="261201153000000+")
    pdu = Pdu(0x00000004, 0, 42, pdu_body(encoded.encode()))
    decoded = pdu.decode()
    assert decoded.sequence_number == 42
    assert decoded.validity_period == "261201153000000+"
    assert decoded.short_message == b"hi"


def test_bind_body_round_trip() -> None:
    bind = BindRequest("rassylka", "secret", "SMS")
    body = bind.encode()
    assert body == b"rassylka\x00secret\x00SMS\x00\x34\x00\x00\x00"
    assert BindRequest.parse(body) == bind
    with pytest.raises(ValueError):
        BindRequest.parse(b"rassylka\x00secret\x00")
    assert read_cstring(b"abc\x00def\x00", 4) == ("def", 8)
    assert read_cstring(b"no-nul") == ("no-nul", 6)


# ── SMPP time ────────────────────────────────────────────────────────────────


def test_absolute_time_is_utc_smpp_format() -> None:
    assert absolute_time(ms(2026, 12, 1, 15, 30, 0)) == "261201153000000+"
    assert absolute_time(ms(2026, 12, 1, 15, 30, 0) + 750) == "261201153000700+"
    assert absolute_time(ms(2031, 1, 2, 3, 4, 5)) == "310102030405000+"


def test_parse_time_reads_absolute_relative_and_offsets() -> None:
    at = ms(2026, 12, 1, 15, 30, 0)
    assert parse_time("", at) is None
    assert parse_time("261201153000000+", 0) == at
    assert parse_time(absolute_time(at + 1234), 0) == at + 1200
    # 18:30 local, 3 hours (12 quarters) ahead of UTC: 15:30 UTC
    assert parse_time("261201183000012+", 0) == at
    assert parse_time("261201123000012-", 0) == at
    assert parse_time("000001023000000R", at) == at + (24 * 3600 + 2 * 3600 + 30 * 60) * 1000


@pytest.mark.parametrize(
    "bad", ["garbage", "2612011530000+", "261201153000049+", "26120115300000x+"]
)
def test_parse_time_refuses_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_time(bad, 0)


# ── one session over a real socket ───────────────────────────────────────────


async def _pair(
    on_server_request: object, **kw: float
) -> tuple[SmppSession, list[SmppSession], asyncio.Server]:
    servers: list[SmppSession] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = SmppSession(reader, writer, on_server_request, name="server")  # type: ignore[arg-type]
        servers.append(session)
        session.start()
        await session.wait_closed()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = SmppSession(reader, writer, lambda s, p: None, name="client", **kw)
    client.start()
    return client, servers, server


def test_session_requests_answers_and_enquire_link() -> None:
    seen: list[Pdu] = []

    def on_request(session: SmppSession, pdu: Pdu) -> None:
        seen.append(pdu)
        if pdu.command_id == BIND_TRANSCEIVER:
            assert session.respond(pdu, 0, b"SIM\x00")
            assert not session.respond(pdu, 0, b"SIM\x00")  # answered already
        # anything else is left unanswered

    async def body() -> None:
        client, servers, server = await _pair(on_request)
        answer = await client.call(BIND_TRANSCEIVER, BindRequest("a", "b", "").encode())
        assert (answer.command_id, answer.status, answer.body) == (0x80000009, 0, b"SIM\x00")
        assert (await client.call(ENQUIRE_LINK)).command_id == ENQUIRE_LINK | 0x80000000
        with pytest.raises(TimeoutError):
            await client.call(DELIVER_SM, b"", timeout=0.2)
        assert client.outstanding == 0  # the timed-out request is forgotten
        assert servers[0].owed == 1  # the server still owes that answer
        assert [p.command_id for p in seen] == [BIND_TRANSCEIVER, DELIVER_SM]
        answer = await servers[0].call(UNBIND, timeout=1)
        assert answer.command_id == UNBIND | 0x80000000  # answered, then the client hangs up
        await asyncio.wait_for(client.wait_closed(), 2)
        with pytest.raises(SessionClosed):
            client.send_request(ENQUIRE_LINK)
        server.close()

    asyncio.run(asyncio.wait_for(body(), 10))


def test_session_nacks_a_failing_handler_and_fails_pending_on_close() -> None:
    def on_request(session: SmppSession, pdu: Pdu) -> None:
        if pdu.command_id == DELIVER_SM:
            raise RuntimeError("boom")

    async def body() -> None:
        client, servers, server = await _pair(on_request)
        answer = await client.call(DELIVER_SM, b"")
        assert (answer.command_id, answer.status) == (GENERIC_NACK, 0x08)
        pending = client.send_request(0x00000103)  # left unanswered
        await asyncio.sleep(0.05)
        assert not pending.done()
        servers[0].close()
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(pending, 2)
        server.close()

    asyncio.run(asyncio.wait_for(body(), 10))


def test_unanswered_enquire_link_ends_the_session() -> None:
    async def body() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1 << 16):
                pass  # reads, never answers

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = SmppSession(
            reader, writer, lambda s, p: None, response_timeout_s=0.2, enquire_link_s=0.2
        )
        client.start()
        await asyncio.wait_for(client.wait_closed(), 3)
        assert not client.open
        server.close()

    asyncio.run(asyncio.wait_for(body(), 10))


def test_data_sm_round_trips_and_a_cut_body_is_refused() -> None:
    import smpp34

    receipt = DataSm(1, "79161234567", 5, "SHOPRU", 0x04, 0,
                     (smpp34.Tlv(0x001E, b"1a2b\x00"), smpp34.Tlv(0x0427, b"\x02"),
                      smpp34.Tlv(0x0424, b"id:1a2b stat:DELIVRD err:000")))
    body = receipt.encode()
    assert DataSm.parse(body) == receipt
    for cut in (1, 3, 16, 25, len(body) - 3):
        with pytest.raises(ValueError):
            DataSm.parse(body[:cut])


def test_alert_notification_gets_no_answer_and_nothing_is_owed() -> None:
    """alert_notification has no response PDU (SMPP 3.4, 4.12): before, it was answered
    generic_nack, which an SMSC may take for a protocol error."""
    seen: list[int] = []

    def on_request(session: SmppSession, pdu: Pdu) -> None:
        seen.append(pdu.command_id)
        session.nack(pdu, 0x03)

    async def body() -> None:
        client, servers, server = await _pair(on_request)
        alert = client.send_request(0x00000102, b"\x01\x0179161234567\x00\x00\x00SHOP\x00")
        answer = await client.call(ENQUIRE_LINK)  # answered in order, after the alert
        assert answer.command_id == ENQUIRE_LINK | 0x80000000
        assert not alert.done() and seen == [] and servers[0].owed == 0
        alert.cancel()
        server.close()

    asyncio.run(asyncio.wait_for(body(), 10))
