"""The log writer (svc_common.logs.LogWriter): records wait in a bounded buffer that a thread writes in batches,
none is lost or reordered, a warning is not held back, and an output that stops taking lines costs memory only
up to the bound, with the loss counted."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from svc_common.logs import LogWriter, TextFormatter
from tests.support.events import eventually

HOUR = 3600.0  # a flush interval no test waits for: what is written before close() was written for a reason


def record(message: str, level: int = logging.INFO, *args: object) -> logging.LogRecord:
    return logging.LogRecord("tests", level, __file__, 1, message, args, None)


def writer(out: io.StringIO, **kwargs: float) -> LogWriter:
    target = logging.StreamHandler(out)
    target.setFormatter(TextFormatter("svc"))
    return LogWriter(target, **kwargs)  # type: ignore[arg-type]


class Blocking(io.StringIO):
    """An output that takes nothing until `release` is set (a stderr whose reader stopped)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.release.wait(30)
        return super().write(text)


def messages(text: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in text.splitlines()]


def test_every_record_is_written_in_order_by_the_writer_thread_or_at_close() -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=HOUR)
    for n in range(500):
        handler.handle(record("line %d", logging.INFO, n))
    assert out.getvalue() == ""  # buffered: no record waits for its own write
    handler.close()
    assert messages(out.getvalue()) == [f"line {n}" for n in range(500)]


async def test_records_reach_the_output_without_close_within_a_few_flush_intervals() -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=0.05)
    try:
        handler.handle(record("first"))
        handler.handle(record("second"))
        await eventually(lambda: messages(out.getvalue()) == ["first", "second"], lambda: repr(out.getvalue()), 10)
    finally:
        handler.close()


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
async def test_a_warning_or_worse_is_written_at_once_with_what_came_before_it(level: int) -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=HOUR)
    try:
        handler.handle(record("before"))
        handler.handle(record("trouble", level))
        await eventually(lambda: messages(out.getvalue()) == ["before", "trouble"], lambda: repr(out.getvalue()), 10)
    finally:
        handler.close()


async def test_an_output_that_stops_taking_lines_bounds_the_buffer_and_the_loss_is_counted() -> None:
    out = Blocking()
    handler = writer(out, flush_seconds=0.01, max_buffered=5)
    try:
        handler.handle(record("stuck"))  # the writer thread takes it and blocks in write()
        await eventually(lambda: out.writes == 1, lambda: "the writer never wrote", 10)
        for n in range(12):
            handler.handle(record("while stuck %d", logging.INFO, n))
    finally:
        out.release.set()
        handler.close()
    assert messages(out.getvalue()) == [
        "stuck",
        *(f"while stuck {n}" for n in range(5)),
        "7 log records dropped: the log's output did not keep up",
    ]
    assert " WARNING svc[" in out.getvalue().splitlines()[-1]  # formatted as any line, at WARNING


def test_a_record_that_cannot_be_formatted_is_reported_and_the_others_are_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=HOUR)
    handler.handle(record("good 1"))
    handler.handle(record("bad %d", logging.INFO, "not a number"))
    handler.handle(record("good 2"))
    handler.close()
    assert messages(out.getvalue()) == ["good 1", "good 2"]
    assert "--- Logging error ---" in capsys.readouterr().err


def test_a_record_logged_after_close_is_written_at_once() -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=HOUR)
    handler.close()
    handler.handle(record("during the interpreter's shutdown"))
    assert messages(out.getvalue()) == ["during the interpreter's shutdown"]


def test_records_below_the_handlers_filters_are_not_kept() -> None:
    out = io.StringIO()
    handler = writer(out, flush_seconds=HOUR)
    handler.addFilter(lambda r: r.getMessage() != "secret")
    handler.handle(record("secret"))
    handler.handle(record("public"))
    handler.close()
    assert messages(out.getvalue()) == ["public"]
