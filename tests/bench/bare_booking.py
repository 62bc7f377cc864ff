"""The floor of any gRPC design for the calls the benchmarks measure (bench_capacity, bench_calendar): a bare grpc.aio
BookingService that runs the service's own statements for CreateBooking (the provider's schedule, then CREATE_SQL),
HoldSlot (the same with HOLD_SQL, on the default terms), ConfirmBooking (CONFIRM_SQL), UpdateBooking (the booking
with its schedule, then UPDATE_SQL) and ListBookings of a provider's window (the service's statement for it) on a
pool configured as the service's, and answers with the booking the statement returned. No authentication,
validation, interceptors, logs, metrics, retries, availability rules or relay; one process, on uvloop as the
services are by default.

    python -m tests.bench.bare_booking PORT DSN POOL_SIZE
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, timedelta
from typing import Any

import asyncpg
import grpc
import uvloop
from google.protobuf.timestamp_pb2 import Timestamp

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service.database import release_connection
from booking_service.domain import DEFAULT_HOLD_TTL
from booking_service.sql import (
    BOOKING_WITH_SCHEDULE_SQL,
    CONFIRM_SQL,
    CREATE_SQL,
    HOLD_SQL,
    SCHEDULE_SQL,
    UPDATE_SQL,
    list_sql,
)
from booking_service.usecases import HoldLimits

NO_BUFFER = timedelta(0)
PROVIDER_WINDOW_SQL = list_sql(customer=False, provider=True, overlaps=True, after=False, deleted=False)


def _stamp(value: Any) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _booking(record: Any) -> booking_pb2.Booking:
    return booking_pb2.Booking(
        id=str(record["id"]),
        customer_id=record["customer_id"],
        provider_id=record["provider_id"],
        service_id=record["service_id"],
        start_time=_stamp(record["start_time"]),
        end_time=_stamp(record["end_time"]),
        create_time=_stamp(record["create_time"]),
        update_time=_stamp(record["update_time"]),
        etag=str(record["version"]),
        state=booking_pb2.BOOKING_STATE_CONFIRMED,
    )


class BareBookings(booking_pb2_grpc.BookingServiceServicer):
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool

    async def _insert(self, b: booking_pb2.Booking, sql: str, *terms: object) -> Any:
        async with self.pool.acquire() as conn:
            await conn.fetchrow(SCHEDULE_SQL, b.provider_id)
            return await conn.fetchrow(
                sql, uuid.uuid4(), b.customer_id, b.provider_id, b.service_id,
                b.start_time.ToDatetime(tzinfo=UTC), b.end_time.ToDatetime(tzinfo=UTC), "", "bench", None,
                uuid.uuid4(), "Bench", "admin", None, "", NO_BUFFER, NO_BUFFER, *terms,
            )  # fmt: skip

    async def CreateBooking(self, request: Any, context: Any) -> booking_pb2.CreateBookingResponse:
        return booking_pb2.CreateBookingResponse(booking=_booking(await self._insert(request.booking, CREATE_SQL)))

    async def HoldSlot(self, request: Any, context: Any) -> booking_pb2.HoldSlotResponse:
        limits = HoldLimits()
        record = await self._insert(
            request.booking, HOLD_SQL, DEFAULT_HOLD_TTL, limits.per_customer, limits.per_provider
        )
        return booking_pb2.HoldSlotResponse(booking=_booking(record))

    async def ConfirmBooking(self, request: Any, context: Any) -> booking_pb2.ConfirmBookingResponse:
        async with self.pool.acquire() as conn:
            record = await conn.fetchrow(
                CONFIRM_SQL, uuid.UUID(request.booking_id), None, None, None, uuid.uuid4(), "bench", "Bench", "admin",
                None, None, None,
            )  # fmt: skip
        return booking_pb2.ConfirmBookingResponse(booking=_booking(record))

    async def UpdateBooking(self, request: Any, context: Any) -> booking_pb2.UpdateBookingResponse:
        b = request.booking
        booking_id = uuid.UUID(b.id)
        async with self.pool.acquire() as conn:
            await conn.fetchrow(BOOKING_WITH_SCHEDULE_SQL, booking_id)
            record = await conn.fetchrow(
                UPDATE_SQL, booking_id, b.start_time.ToDatetime(tzinfo=UTC), b.end_time.ToDatetime(tzinfo=UTC),
                None, None, None, None, None, uuid.uuid4(), "bench", "Bench", "admin", list(request.update_mask.paths),
                None, None, None, "",
            )  # fmt: skip
        return booking_pb2.UpdateBookingResponse(booking=_booking(record))

    async def ListBookings(self, request: Any, context: Any) -> booking_pb2.ListBookingsResponse:
        window = request.overlaps
        async with self.pool.acquire() as conn:
            records = await conn.fetch(
                PROVIDER_WINDOW_SQL, request.page_size + 1, request.provider_id,
                window.start_time.ToDatetime(tzinfo=UTC), window.end_time.ToDatetime(tzinfo=UTC),
            )  # fmt: skip
        return booking_pb2.ListBookingsResponse(bookings=[_booking(r) for r in records[: request.page_size]])


async def serve(port: int, dsn: str, pool_size: int) -> None:
    pool = await asyncpg.create_pool(
        dsn, min_size=pool_size, max_size=pool_size, server_settings={"timezone": "UTC"}, reset=release_connection
    )
    server = grpc.aio.server()
    # The generated base answers UNIMPLEMENTED for the RPCs it does not override; its stub declares them abstract.
    booking_pb2_grpc.add_BookingServiceServicer_to_server(BareBookings(pool), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
