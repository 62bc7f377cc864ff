"""The change-event stream both services share: a Redis Stream that booking_service's relay appends to and
every notify_service instance reads.

Each entry's id is `<ms>-<seq>`: `seq` is the event's gapless position, handed out by the relay in commit order,
`ms` the relay's clock when it did (never decreasing), so ids increase and age-based trimming (XTRIM MINID) works.
The id is also the event's `event_id`, the cursor a client resumes from; `0-0` (ORIGIN) is the cursor of a
client that has seen nothing, to read the whole history (honoured only while the stream still holds event 1).
Because `seq` has no gaps, a reader knows it missed nothing exactly when each entry's seq follows the previous
one's; anything else (trimmed history, Redis data loss) is detectable, never a silent gap.

Entry fields: `event` (a serialized booking.v1.BookingEvent, event_id set), and `customer`, `provider`,
`booking` (the booking's ids) so a reader can filter without parsing the event. An entry whose event the relay
could not publish has only `skipped` (the error): it keeps the seqs gapless and delivers nothing.

Erasure: a hard delete erases the booking's notes from its events. Redis cannot rewrite an entry, so before the
relay appends a HARD_DELETED event it deletes (XDEL) that booking's earlier entries and puts their redacted
copies, under the same ids, in a sorted set beside the stream (`erased_key`, score: seq; member: `pack_entry`),
all in one script (atomic). A reader that finds seqs missing between two entries takes them from there (a gap
that set cannot fill is real: trimmed history, or data Redis lost), so cursors stay valid and nobody sees a gap.

Seams: after PostgreSQL fails over to a standby that lacks the primary's last transactions, the new primary's
outbox ends before positions that were already published or read. The relay never hands those positions out
again: before it places anything there, it places a seam entry (only `seam`, saying where it jumped from and
why) SEAM_GAP positions past the newest one it knows of, and with an ms no smaller than any it knows of. A reader
takes a seam as the continuation of whatever came before it (`continues`), so live subscribers go on, a replay
from `0-0` reads both sides of it, and a cursor that names an event the stream never got (it was read from the
lost outbox) is unknown, hence OUT_OF_RANGE, instead of naming another event's position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_STREAM_KEY = "booking:events"
# The gRPC health service name both services report the stream's reachability under.
HEALTH_NAME = "events"

FIELD_EVENT = b"event"
FIELD_CUSTOMER = b"customer"
FIELD_PROVIDER = b"provider"
FIELD_BOOKING = b"booking"
# An entry that holds a place in the stream but no event (the relay set the event aside): readers pass over it.
FIELD_SKIPPED = b"skipped"
# An entry where positions jump on purpose (a seam, after a failover): it delivers nothing, and what follows it
# continues what came before it.
FIELD_SEAM = b"seam"
# A provider schedule's change (a ScheduleEvent's bytes, with FIELD_PROVIDER): public, unlike a booking's.
FIELD_SCHEDULE = b"schedule"
# How far a seam jumps past the newest position known: more than any outbox can place while Redis is away (a
# billion events), and small enough for a bigint to take nine billion seams.
SEAM_GAP = 1_000_000_000


def erased_key(stream_key: str) -> str:
    """The sorted set of the redacted copies of erased entries of the stream `stream_key`."""
    return f"{stream_key}:erased"


_PACKED_IDS = (FIELD_CUSTOMER, FIELD_PROVIDER, FIELD_BOOKING)


def pack_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> bytes:
    """A stream entry as one string (a member of the erased set): its id and the booking's ids, each prefixed
    with its length (netstring style, whatever bytes they hold), then the event."""
    parts = [entry_id, *(fields.get(name, b"") for name in _PACKED_IDS)]
    return b"".join(b"%d:%b" % (len(part), part) for part in parts) + fields.get(FIELD_EVENT, b"")


def unpack_entry(member: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The entry id and fields `pack_entry` packed (an entry without an event comes back as one set aside);
    ValueError if `member` is not one."""
    parts, rest = [], memoryview(member)
    for _ in range(1 + len(_PACKED_IDS)):
        length, colon, _tail = bytes(rest[:20]).partition(b":")
        if not colon or not length.isdigit():
            raise ValueError("not a packed stream entry")
        start = len(length) + 1
        end = start + int(length)
        if end > len(rest):
            raise ValueError("not a packed stream entry")
        parts.append(bytes(rest[start:end]))
        rest = rest[end:]
    entry_id, *ids = parts
    fields = dict(zip(_PACKED_IDS, ids, strict=True))
    fields |= {FIELD_EVENT: bytes(rest)} if rest else {FIELD_SKIPPED: b"erased; its event could not be read"}
    return entry_id, fields


_MAX_PART = 2**63 - 1
_EVENT_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")


@dataclass(frozen=True, order=True, slots=True)
class EventId:
    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str | bytes) -> EventId | None:
        """The id `text` spells, or None if it is not one."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        match = _EVENT_ID.fullmatch(text)
        if match is None:
            return None
        ms, seq = int(match[1]), int(match[2])
        if ms > _MAX_PART or seq > _MAX_PART or (seq == 0 and ms != 0):
            return None
        return cls(ms, seq)

    def follows(self, previous: EventId) -> bool:
        """Whether this event comes right after `previous`, with nothing missing in between."""
        return self.seq == previous.seq + 1 and self > previous

    def continues(self, previous: EventId, *, seam: bool) -> bool:
        """Whether this entry (a seam, if `seam`) comes next after `previous`: a seam continues anything before it
        in seq (its ms may be behind, if it was placed where the stream could not be read), any other entry only
        the one right before it."""
        return self.seq > previous.seq if seam else self.follows(previous)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ORIGIN = EventId(0, 0)  # before the first event
