"""Tokens as an operator meets them: a garbage token is refused in words about the token, not the library's
internals; `python -m devtools.mint_token` signs with make run's secret when JWT_SECRET is unset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools import mint_token
from svc_common.auth import TokenVerifier
from svc_common.errors import Unauthenticated

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("token", ["\xb7\xb7\xb7", "abc", "a.b.c", "e30.e30", "...."])
def test_a_token_that_is_not_a_jwt_is_refused_in_plain_words(token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        TokenVerifier(mint_token.LOCAL_SECRET).verify(token)
    assert refused.value.reason == "INVALID_TOKEN"  # the reason it always had; only the words are new
    assert refused.value.message == "token is not a JWT (header.payload.signature, base64url)"


def test_mint_token_without_jwt_secret_signs_with_the_secret_make_run_uses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert mint_token.main(["--sub", "alice", "--role", "user"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenVerifier(mint_token.LOCAL_SECRET).verify(token).id == "alice"
    makefile = (PROJECT / "Makefile").read_text()
    assert re.search(rf"^export JWT_SECRET \?= {mint_token.LOCAL_SECRET}$", makefile, flags=re.M)
