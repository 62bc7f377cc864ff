"""Logging for both services: LOG_FORMAT (`text` or `json`, one object per line) and LOG_LEVEL, and the one
line every finished RPC gets (svc_common.interceptor): method, code, reason, duration_ms, caller, role,
request_id, peer, plus what the handler adds (Subscribe: events sent, why it ended).

The request id is the `x-request-id` a client sent (at most 128 printable ASCII characters; anything else is
replaced) or one made here; it is sent back in the response's initial metadata. Nothing logged carries a token
or a booking's contents. (A formatter of a dozen lines rather than a logging library: the standard library
does the rest, and the JSON keys are ours to keep stable.)
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from svc_common.settings import Env

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The current RPC's log fields: the interceptor starts them, the handler may add to them.
_call: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("call_log")


def request_id(sent: str | bytes | None) -> str:
    """The id of this request: the client's, if it is a usable one, else a new one."""
    if isinstance(sent, str) and 0 < len(sent) <= MAX_REQUEST_ID and sent.isascii() and sent.isprintable():
        return sent
    return uuid.uuid4().hex


def start_call(fields: dict[str, Any]) -> dict[str, Any]:
    _call.set(fields)
    return fields


def call_fields() -> dict[str, Any]:
    """The current RPC's log fields (an empty, unused mapping outside an RPC)."""
    return _call.get({})


def current_request_id() -> str:
    return str(call_fields().get("request_id", ""))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "rpc", {}))
        if hasattr(record, "trace_id"):  # svc_common.tracing, when on
            entry["trace_id"], entry["span_id"] = record.trace_id, getattr(record, "span_id", "")
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_BARE = re.compile(r'[^\s="\\]+')  # a value logfmt reads back as it is, needing no quotes


def logfmt_value(value: object) -> str:
    """`value` as a logfmt value: as it is when it holds no space, `=`, quote, backslash or non-printable
    character, else quoted with those escaped, so no value (a client's request id, a token's claims, a peer) can
    add a field to the line or override one."""
    text = str(value)
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False) if text.isprintable() else json.dumps(text)


class TextFormatter(logging.Formatter):
    """`time LEVEL service[pid] logger: message key=value ...` (the pid tells a supervisor's workers apart)."""

    def __init__(self, service: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service or 'python'}[%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "rpc", None) or {}
        if hasattr(record, "trace_id"):  # svc_common.tracing, when on
            fields = {**fields, "trace_id": record.trace_id}
        if not fields:
            return line
        head, _, rest = line.partition("\n")  # a traceback stays below the line
        pairs = " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items() if value not in (None, ""))
        return f"{head} {pairs}" + (f"\n{rest}" if rest else "")


FLUSH_SECONDS = 0.05
MAX_BUFFERED = 20_000


class LogWriter(logging.Handler):
    """Keeps records in a bounded buffer that a thread formats and writes in one write, `flush_seconds` after
    the first of them arrived, so neither an RPC's response nor the event loop waits on formatting or a slow
    stderr, and most calls cost no thread wake-up (waking a writer thread for each record, as a QueueListener
    does, cost about 0.3 ms of CPU per RPC here: docs/benchmarks.md); an idle service wakes it never. A WARNING
    or worse is written at once, with what came before it. Past `max_buffered` records (an output that stopped
    taking lines) records are dropped and counted, and a line says how many. Closing it (logging.shutdown, at
    exit or by the stuck-shutdown watchdog) writes what is buffered, and records logged after that are written
    as they come."""

    def __init__(
        self,
        target: logging.StreamHandler[Any],
        *,
        flush_seconds: float = FLUSH_SECONDS,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        super().__init__()
        self._target = target
        self._flush_seconds = flush_seconds
        self._max_buffered = max_buffered
        self._buffer: deque[logging.LogRecord] = deque()  # append and popleft are atomic: no lock per record
        self._dropped = 0
        self._wake = threading.Event()  # something to write
        self._hurry = threading.Event()  # ... now: a warning, or closing
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        if len(self._buffer) >= self._max_buffered:
            self._dropped += 1
        else:
            self._buffer.append(record)
        if self._closed:  # late in shutdown: no writer thread any more, so written here and now
            self._write()
        elif record.levelno >= logging.WARNING:
            self._hurry.set()
            self._wake.set()
        elif not self._wake.is_set():  # the first since the last write: the one record that wakes the writer
            self._wake.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._hurry.wait(self._flush_seconds)  # for more to come, unless hurried
            self._hurry.clear()
            self._wake.clear()  # before taking the records: one arriving from here on wakes the next round
            self._write()

    def _write(self) -> None:
        records = []
        buffer = self._buffer
        while buffer:
            records.append(buffer.popleft())
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            records.append(
                logging.makeLogRecord(
                    {
                        "name": __name__,
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{dropped} log records dropped: the log's output did not keep up",
                    }
                )
            )
        lines = []
        for record in records:
            try:
                lines.append(self._target.format(record) + self._target.terminator)
            except Exception:  # noqa: BLE001 - as logging does: report the bad record, keep the rest
                self.handleError(record)
        if not lines:
            return
        try:
            stream = self._target.stream
            stream.write("".join(lines))
            stream.flush()
        except Exception:  # noqa: BLE001 - a broken stderr must not end the writer
            self.handleError(records[-1])

    def close(self) -> None:
        self._closed = True
        self._hurry.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._write()
        super().close()


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "INFO"

    @classmethod
    def read(cls, env: Env) -> LogConfig:
        return cls(
            env.text("LOG_FORMAT", cls.format, choices=FORMATS), env.text("LOG_LEVEL", cls.level, choices=LEVELS)
        )


def configure(config: LogConfig, service: str = "") -> None:
    """Set up the root logger: one line per record, in `config.format`, at `config.level` and above, naming
    `service` and the process."""
    log_format, level = config.format, config.level
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [LogWriter(handler)]
    root.setLevel(level)
