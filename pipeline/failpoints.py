"""Test-only failpoints: make the process die at a chosen point, as a crash would there.

``PIPELINE_FAILPOINTS=submit.after_answer:7`` (comma-separated ``name:n`` pairs) makes
the process SIGKILL itself the ``n``-th time ``failpoint("submit.after_answer")`` is
reached. For crash tests only (``tests/test_kill_sweep.py``); never set it otherwise.
Unset, a failpoint costs one lookup in an empty dict.

Points: ``submit.before_send`` (intent durable, request not yet sent),
``submit.after_answer`` (the provider answered, the remote id not yet recorded),
``download.part_written`` (part of a large body is in its ``.part``),
``download.before_finish`` (files in place, the job not yet ``done``),
``copy.after_page`` (``pipeline manifest copy`` has committed a page to its destination).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "failpoint"]

ENV = "PIPELINE_FAILPOINTS"


def _armed(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.rpartition(":")
        if not name or not count.isdigit() or int(count) < 1:
            print(f"warning: {ENV}: ignored {item!r} (want name:n, n >= 1)", file=sys.stderr)
            continue
        armed[name] = int(count)
    return armed


_ARMED = _armed(os.environ.get(ENV, ""))
_reached: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``name`` is armed and reached for the n-th time."""
    if name not in _ARMED:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == _ARMED[name]:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
