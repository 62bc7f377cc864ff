"""Page tokens: signed, bound to their query, refused when anything about them is off."""

from __future__ import annotations

import pytest

from booking_service.pagination import PageTokens, derive_key, page_size
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
