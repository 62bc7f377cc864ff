"""PostgreSQL URLs naming several hosts, in both of libpq's forms (svc_common.postgres): which hosts a connection
tries, in order, and what is refused, with a message that says why."""

from __future__ import annotations

import pytest

from svc_common.postgres import hosts


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", [("h", 5432)]),
        ("postgres://u:p%40ss@h:6543/db?sslmode=disable", [("h", 6543)]),
        ("postgresql://u@h:65535/db", [("h", 65535)]),
        (
            "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write",
            [("h1", 5432), ("h2", 5433)],
        ),
        ("postgresql://u@h1,h2:5433/db", [("h1", 5432), ("h2", 5433)]),
        ("postgresql://u@/db?host=h1,h2&port=5432,5433&target_session_attrs=primary", [("h1", 5432), ("h2", 5433)]),
        ("postgresql://u@/db?host=h1,h2&port=6000", [("h1", 6000), ("h2", 6000)]),
        ("postgresql://u@[::1]:5433,[fe80::2]/db", [("::1", 5433), ("fe80::2", 5432)]),
        ("postgresql:///db?host=/run/postgresql", [("/run/postgresql", 5432)]),
        ("postgresql://u@h?sslmode=require", [("h", 5432)]),
        ("postgresql://", [("localhost", 5432)]),
    ],
)
def test_each_form_names_its_hosts_in_order(url: str, expected: list[tuple[str, int]]) -> None:
    assert hosts(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "must be a URL starting with postgresql:// or postgres://"),
        ("h1:5432/db", "must be a URL starting with"),
        ("postgresql://u@h1:0/db", "port '0' of h1 is not a number from 1 to 65535"),
        ("postgresql://u@h1:5432,h2:65536/db", "port '65536' of h2"),
        ("postgresql://u@h1:5432,,h2/db", "a host in the list is empty"),
        ("postgresql://u@/db?host=h1,h2,h3&port=1,2", "3 hosts but 2 ports"),
        ("postgresql://u@h/db?target_session_attrs=readwrite", "target_session_attrs must be one of any, primary"),
    ],
)
def test_a_url_that_cannot_be_used_says_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hosts(url)
