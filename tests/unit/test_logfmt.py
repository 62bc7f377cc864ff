"""The text log format's values are logfmt values: whatever a client sends, a parser reads back one field with
exactly that value (svc_common.logs.logfmt_value)."""

from __future__ import annotations

import json

import pytest

from svc_common.logs import MAX_REQUEST_ID, logfmt_value, request_id


@pytest.mark.parametrize("value", ["abc", "ipv4:127.0.0.1:5555", "u-1.2_3/4", "12.5"])
def test_plain_values_stay_bare(value: str) -> None:
    assert logfmt_value(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "hunt2 code=OK",
        "a=b",
        'say "hi"',
        'quote"only',
        "back\\slash",
        "tab\there",
        "line\nbreak",
        "\x1b[31mred",
        "\u2028",
        "",
    ],
)
def test_values_that_could_add_a_field_are_quoted_and_read_back_whole(value: str) -> None:
    quoted = logfmt_value(value)
    assert quoted.startswith('"') and quoted.endswith('"')
    assert quoted.isprintable()
    assert "\n" not in quoted and "\x1b" not in quoted
    assert json.loads(quoted) == value


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("x" * MAX_REQUEST_ID, True), ("x" * (MAX_REQUEST_ID + 1), False), ("r", True), ("", False), ("caf\u00e9", False)],
)
def test_a_clients_request_id_is_kept_up_to_the_maximum_length_and_replaced_beyond_it(sent: str, kept: bool) -> None:
    got = request_id(sent)
    assert (got == sent) is kept
    if not kept:
        assert len(got) == 32 and got.isalnum()  # one of ours
