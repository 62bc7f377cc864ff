"""Page tokens: signed, bound to their query, refused when anything about them is off."""

from __future__ import annotations

import pytest

from booking_service.pagination import MAX_TOKEN_CHARS, PageTokens, derive_key, fingerprint, page_size
from svc_common.errors import InvalidArgument

TOKENS = PageTokens(derive_key("a-secret-of-at-least-thirty-two-bytes!!"))


def test_a_token_gives_back_its_position_for_its_own_query_only() -> None:
    token = TOKENS.encode("q1", ("2031-01-01T00:00:00+00:00", "id-1"))
    assert TOKENS.decode(token, "q1", (str, str)) == ["2031-01-01T00:00:00+00:00", "id-1"]
    with pytest.raises(InvalidArgument):
        TOKENS.decode(token, "q2", (str, str))
    assert TOKENS.decode("", "q1", (str, str)) is None


def test_a_token_signed_with_another_key_is_refused() -> None:
    other = PageTokens(derive_key("another-secret-of-thirty-two-bytes-or-more"))
    with pytest.raises(InvalidArgument) as raised:
        TOKENS.decode(other.encode("q", (1,)), "q", (int,))
    assert raised.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    "mangle", [lambda t: t[:-1], lambda t: t + "A", lambda t: t.replace(".", ""), lambda t: "x" * 2000]
)
def test_altered_tokens_are_refused(mangle: object) -> None:
    token = TOKENS.encode("q", (5,))
    with pytest.raises(InvalidArgument):
        TOKENS.decode(mangle(token), "q", (int,))  # type: ignore[operator]


@pytest.mark.parametrize("key", [(-1,), (2**63,), ("5",)])
def test_signed_values_are_still_checked(key: tuple[object, ...]) -> None:
    token = TOKENS.encode("q", key)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        TOKENS.decode(token, "q", (int,))


def test_page_sizes() -> None:
    assert page_size(0) == 50 and page_size(1) == 1 and page_size(1000) == 1000 and page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_page_size_edges() -> None:
    assert [page_size(n) for n in (0, 1, 2, 999, 1000, 1001)] == [50, 1, 2, 999, 1000, 1000]
    with pytest.raises(InvalidArgument) as raised:
        page_size(-1)
    assert [(v.field, v.description) for v in raised.value.violations] == [("page_size", "must not be negative")]


def test_tokens_are_deterministic_per_key_and_query_and_say_why_they_are_refused() -> None:
    again = PageTokens(derive_key("a-secret-of-at-least-thirty-two-bytes!!"))
    token = TOKENS.encode("q", ("a", 7))
    assert again.encode("q", ("a", 7)) == token and TOKENS.decode(token, "q", (str, int)) == ["a", 7]
    assert derive_key("x" * 32) != derive_key("y" * 32) and len(derive_key("x" * 32)) == 32
    assert fingerprint("a", 1) == fingerprint("a", 1) != fingerprint("a", 2)
    assert len(fingerprint("a")) == 16
    body, _, mac = token.partition(".")
    assert "=" not in body and "=" not in mac
    with pytest.raises(InvalidArgument) as raised:
        TOKENS.decode(token, "q", (str,))  # a key of another shape
    assert raised.value.reason == "INVALID_PAGE_TOKEN"
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("page_token", "not a page token of this query; start again without one")
    ]


@pytest.mark.parametrize("key", [(0,), (2**63 - 1,)])
def test_the_edges_of_a_signed_integer_pass(key: tuple[int]) -> None:
    assert TOKENS.decode(TOKENS.encode("q", key), "q", (int,)) == list(key)


def test_a_token_of_the_right_length_limit_passes_and_one_over_it_does_not() -> None:
    long_query = "q" * 600
    token = TOKENS.encode(long_query, (1,))
    assert len(token) <= MAX_TOKEN_CHARS and TOKENS.decode(token, long_query, (int,)) == [1]
    with pytest.raises(InvalidArgument):
        TOKENS.decode(TOKENS.encode("q" * 800, (1,)), "q" * 800, (int,))


def test_a_body_changed_under_its_mac_is_refused() -> None:
    genuine = TOKENS.encode("q", (5,))
    forged_body = TOKENS.encode("q", (6,)).partition(".")[0]
    with pytest.raises(InvalidArgument):
        TOKENS.decode(f"{forged_body}.{genuine.partition('.')[2]}", "q", (int,))


def test_tokens_of_every_length_round_trip() -> None:
    """Base64 without padding: bodies and MACs of every length modulo 4, ending in any character."""
    for n in range(200):
        query = "q" * (n % 7)
        token = TOKENS.encode(query, ("x" * n, n))
        assert TOKENS.decode(token, query, (str, int)) == ["x" * n, n]
