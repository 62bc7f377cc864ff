"""Logs an operator can use: LOG_FORMAT=json gives one object per line, every finished RPC one line with its
method, code, reason, duration, caller, role, request id and peer; the request id is the client's
`x-request-id` (or one made up) and comes back in the initial metadata; no token or booking contents."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import pytest

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import auth, fresh_slot, ts, uid
from tests.support.servers import ServiceProcess, booking_env, refused_start


def lines(process: ServiceProcess) -> list[dict[str, Any]]:
    """The JSON lines of a service's log (grpc's own C-core lines are not ours)."""
    return [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]


async def line_of(process: ServiceProcess, request_id: str, message: str = "rpc") -> dict[str, Any]:
    """The one line `message` of a request (lines are written in batches: waited for)."""

    def found() -> list[dict[str, Any]]:
        return [e for e in lines(process) if e.get("request_id") == request_id and e["message"] == message]

    await eventually(lambda: len(found()) >= 1, lambda: f"no {message!r} line for {request_id}", within=10)
    assert len(found()) == 1, f"{len(found())} {message!r} lines for {request_id}"
    return found()[0]


async def test_each_rpc_logs_one_json_line_with_its_outcome_and_the_request_id_comes_back(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking(LOG_FORMAT="json")
    notify = system.notify(LOG_FORMAT="json")
    channel = grpc.aio.insecure_channel(booking.address)
    channels.append(channel)
    stub = booking_pb2_grpc.BookingServiceStub(channel)
    admin_sub = uid("admin")
    bearer = auth("admin", admin_sub)
    start, end = fresh_slot()
    booking_in = booking_pb2.Booking(
        customer_id=uid("cust"), provider_id=uid("prov"), service_id="cut", start_time=ts(start), end_time=ts(end)
    )
    booking_in.notes = "NOTES-NEVER-LOGGED"
    call = stub.CreateBooking(
        booking_pb2.CreateBookingRequest(booking=booking_in), metadata=(*bearer, ("x-request-id", "req-create-1"))
    )
    created = await call
    assert ("x-request-id", "req-create-1") in tuple(await call.initial_metadata())

    missing = stub.GetBooking(
        booking_pb2.GetBookingRequest(booking_id="00000000-0000-4000-8000-000000000000"),
        metadata=(*bearer, ("x-request-id", "req-missing")),
    )
    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await missing
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
    anonymous = stub.GetBooking(
        booking_pb2.GetBookingRequest(booking_id=created.booking.id), metadata=(("x-request-id", "req-anon"),)
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await anonymous
    odd = stub.GetBooking(
        booking_pb2.GetBookingRequest(booking_id=created.booking.id), metadata=(*bearer, ("x-request-id", "x" * 500))
    )
    await odd
    made_up = str(dict(await odd.initial_metadata())["x-request-id"])
    assert made_up != "x" * 500 and len(made_up) == 32  # too long to keep: replaced by one of ours

    watcher = Subscription("admin", uid("ops"))
    await watcher.open(notify.address)
    await (await admin_on(booking, channels)).create(provider_id=uid("prov"), customer_id=uid("cust"))
    await eventually(lambda: len(watcher.events) >= 1, lambda: "no event")
    await watcher.close()

    ok = await line_of(booking, "req-create-1")
    assert ok["level"] == "INFO" and ok["code"] == "OK" and ok["reason"] == ""
    assert ok["service"] == "booking_service" and isinstance(ok["pid"], int)
    assert ok["method"] == "/booking.v1.BookingService/CreateBooking"
    assert ok["caller"] == admin_sub and ok["role"] == "admin"
    assert ok["peer"].startswith("ipv") and ok["duration_ms"] > 0
    refused = await line_of(booking, "req-missing")
    assert refused["level"] == "INFO" and refused["code"] == "NOT_FOUND" and refused["reason"]
    anon = await line_of(booking, "req-anon")
    assert anon["code"] == "UNAUTHENTICATED" and "caller" not in anon
    assert (await line_of(booking, made_up))["code"] == "OK"

    def subscription_logged() -> bool:
        return any(e.get("method") == "/notify.v1.NotifyService/Subscribe" for e in lines(notify))

    await eventually(subscription_logged, lambda: "no Subscribe line")
    ended = next(e for e in lines(notify) if e.get("method") == "/notify.v1.NotifyService/Subscribe")
    assert ended["code"] == "CANCELLED" and ended["ended"] == "CANCELLED" and ended["events"] >= 1
    opened = await line_of(notify, ended["request_id"], "subscribed")
    assert opened["role"] == "admin"

    everything = booking.log() + notify.log()
    assert "NOTES-NEVER-LOGGED" not in everything
    used = bearer[0][1].removeprefix("Bearer ")
    assert used.split(".")[1] not in everything  # the token, not even its claims


async def test_log_level_warning_keeps_ordinary_calls_out(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking(LOG_LEVEL="WARNING")
    await (await admin_on(booking, channels)).create(provider_id=uid("prov"), customer_id=uid("cust"))
    booking.stop()  # a stopped service has written every line it logged
    assert " rpc " not in booking.log() and "INFO" not in booking.log()


@pytest.mark.parametrize(("name", "value"), [("LOG_FORMAT", "xml"), ("LOG_LEVEL", "LOUD")])
def test_a_bad_log_setting_is_one_line_and_exit_status_2(
    booking_db_url: str, redis_url: str, name: str, value: str
) -> None:
    stderr = refused_start("booking_service", {**booking_env(booking_db_url, redis_url), name: value})
    assert f"{name} must be one of" in stderr


_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """The fields of a logfmt line as a logfmt parser reads them: the last value of a key wins."""
    return {key: json.loads(value) if value.startswith('"') else value for key, value in _LOGFMT_PAIR.findall(line)}


async def test_a_request_id_cannot_add_or_override_fields_of_a_text_log_line(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking()  # LOG_FORMAT defaults to text
    channel = grpc.aio.insecure_channel(booking.address)
    channels.append(channel)
    stub = booking_pb2_grpc.BookingServiceStub(channel)
    user = uid("user")
    forged = 'hunt2 code=OK caller=root role=admin "quoted\\" x=1'
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListDeletedBookings(
            booking_pb2.ListDeletedBookingsRequest(), metadata=(*auth("user", user), ("x-request-id", forged))
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    def logged() -> list[str]:
        return [line for line in booking.log().splitlines() if "ListDeletedBookings" in line and ": rpc " in line]

    await eventually(lambda: len(logged()) == 1, lambda: f"{logged()}")
    assert re.search(r" INFO booking_service\[\d+\] svc_common\.rpc: rpc ", logged()[0]), logged()[0]
    fields = logfmt(logged()[0])
    assert fields["request_id"] == forged
    assert fields["code"] == "PERMISSION_DENIED" and fields["caller"] == user and fields["role"] == "user"
    assert "x" not in fields
