"""bookingctl's confirmation at the terminal, and the exceptions that end a run with exit status 2.

It runs outside any event loop: Ctrl-C at the prompt must end the program at once (inside asyncio.run, the
first Ctrl-C only cancels the main task, and a read in a thread cannot be cancelled at all).
"""

from __future__ import annotations

import os
import select
import signal
import sys


class Usage(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class NotConfirmed(Exception):
    """The user did not confirm a permanent deletion (exit status 2; the message says what was not done)."""


def confirm(question: str, refused: str) -> None:
    """Ask `question` at the terminal; anything but y or yes (Ctrl-D too) raises NotConfirmed(`refused`)."""
    if not sys.stdin.isatty():
        raise Usage(f"{question.rstrip('? ')}: confirm with --yes (stdin is not a terminal)")
    try:
        answer = ask(f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no
        print(file=sys.stderr)
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise NotConfirmed(refused)


def ask(prompt: str) -> str:
    """A line from the terminal, as input() reads it, but a Ctrl-C that comes just as the prompt is written
    still ends the wait (input() would start its read after the signal and wait for a line; a signal's byte on
    the wakeup pipe wakes this select instead). EOFError on Ctrl-D."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    previous = signal.set_wakeup_fd(wake)
    try:
        while True:
            ready, _, _ = select.select([sys.stdin, woken], [], [])
            if sys.stdin in ready:
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
                return line.rstrip("\n")
            os.read(woken, 512)  # a signal: its handler has run (SIGINT's raised KeyboardInterrupt)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(woken)
        os.close(wake)
