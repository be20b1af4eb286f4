"""Connection limits of the webhook receiver, below HTTP: what slow or too many clients get.

``ConnectionGuard`` wraps the HTTP server's protocol factory (aiohttp's ``web.Server``)
for ``loop.create_server``. Every connection must send its request head within
``header_timeout`` and the rest of its request within ``body_timeout``, or it is
aborted. At most ``max_connections`` are open: a new one over the cap replaces the
oldest connection still sending its head (the likely slowloris), else the oldest still
sending its body, and is refused only when every open request has fully arrived. The
receiver answers with ``Connection: close``, so a connection serves one request and
never idles.

What is dropped is counted, not logged one by one: ``QuietLog`` writes at most one
summary line per ``interval`` (and one when the receiver closes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["ConnectionGuard", "QuietLog", "counting_logger", "fd_budget"]

_HEAD_END = b"\r\n\r\n"
_HEAD_KEPT = 16 * 1024  # more than aiohttp accepts in a head; a longer one is refused there
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,18})[ \t]*$", re.I | re.M)


def _content_length(head: bytes) -> int | None:
    """The body size a request head announces; None when it does not say (chunked)."""
    found = _CONTENT_LENGTH.search(head.replace(b"\r\n", b"\n"))
    return int(found.group(1)) if found else None


def fd_budget() -> int:
    """Connections the receiver may hold: a quarter of the process's file descriptors,
    so that the run's own sockets and files never run short because of it."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(8, soft // 4)


class QuietLog:
    """Counts what the receiver dropped; a summary line at most once per ``interval``."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._since: float | None = None  # when the counts being gathered began
        self._last: float | None = None  # when the last line was written
        self.totals: Counter[str] = Counter()

    def count(self, what: str) -> None:
        now = self._clock()
        self._counts[what] += 1
        self.totals[what] += 1
        if self._since is None:
            self._since = now
        if self._last is None or now - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Write what was counted since the last line, if anything."""
        if not self._counts:
            return
        now = self._clock()
        counts = ", ".join(f"{n} {what}" for what, n in self._counts.most_common())
        seconds = now - (self._since if self._since is not None else now)
        self._logger.warning("webhook receiver dropped in %.0fs: %s", seconds, counts)
        self._counts.clear()
        self._since, self._last = None, now


class _CountingHandler(logging.Handler):
    def __init__(self, quiet: QuietLog) -> None:
        super().__init__(logging.WARNING)
        self._quiet = quiet

    def emit(self, record: logging.LogRecord) -> None:
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
        self._quiet.count(f"bad requests ({kind})")


def counting_logger(quiet: QuietLog) -> logging.Logger:
    """A logger for the HTTP server's own messages: warnings and errors are counted into
    ``quiet`` (no tracebacks); the rest is dropped."""
    logger = logging.Logger("pipeline.completion.webhook.server", logging.WARNING)
    logger.propagate = False
    logger.addHandler(_CountingHandler(quiet))
    return logger


class ConnectionGuard:
    """Deadlines and a cap on the connections of one server (see the module docstring)."""

    def __init__(
        self,
        quiet: QuietLog,
        *,
        max_connections: int,
        header_timeout: float,
        body_timeout: float,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.quiet = quiet
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._open: dict[_Guarded, None] = {}  # oldest first

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``create_server`` wrapping ``make``'s protocols."""
        return lambda: _Guarded(self, make)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def close_all(self) -> None:
        for connection in list(self._open):
            connection.abort(None)

    def admit(self, connection: _Guarded) -> bool:
        """Register a new connection; False when it must be refused."""
        if len(self._open) >= self.max_connections:
            oldest = next((c for c in self._open if c.in_head), None)
            if oldest is not None:
                oldest.abort("slow heads dropped at the connection cap")
            else:
                oldest = next((c for c in self._open if c.in_body), None)
                if oldest is None:
                    self.quiet.count("refused at the connection cap")
                    return False
                oldest.abort("slow bodies dropped at the connection cap")
        self._open[connection] = None
        return True

    def forget(self, connection: _Guarded) -> None:
        self._open.pop(connection, None)


class _Guarded(asyncio.Protocol):
    """One connection: the HTTP protocol inside, a deadline around it."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""
        self._body_left: int | None = None  # None: no Content-Length, so never known done
        self.in_head = True

    @property
    def in_body(self) -> bool:
        """Past its head, and the body it announced has not all arrived."""
        return not self.in_head and (self._body_left is None or self._body_left > 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(self):
            transport.abort()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)
        self._arm(self._guard.header_timeout, "slow request heads")

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self.in_head:
            seen = self._head + data
            head, end, body = seen.partition(_HEAD_END)
            if end:
                self.in_head = False
                self._head = b""
                self._body_left = _content_length(head)
                self._count_body(len(body))
                self._arm(self._guard.body_timeout, "slow request bodies")
            else:
                self._head = seen[-_HEAD_KEPT:]
        else:
            self._count_body(len(data))
        self._inner.data_received(data)

    def _count_body(self, size: int) -> None:
        if self._body_left is not None:
            self._body_left = max(0, self._body_left - size)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.forget(self)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def abort(self, why: str | None) -> None:
        """Drop the connection at once (RST), counting ``why``."""
        if why is not None:
            self._guard.quiet.count(why)
        self._guard.forget(self)
        if self._transport is not None:
            self._transport.abort()

    def _arm(self, seconds: float, why: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self.abort, why)
