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

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ORIGIN = EventId(0, 0)  # before the first event
