"""Progress display and run log behind a small interface; tqdm lives only here.

On a terminal: one bar per provider counting finished jobs (done, failed, …) out of the
jobs that run has to handle. Elsewhere (a file, nohup, cron): a status line per provider
every ``status_every`` seconds, flushed so ``tail -f`` shows it. ``--quiet`` shows
neither. In a shared run both follow every runner's jobs (``follow``), not only this
process's. ``-v`` and ``--log-file`` add one logfmt line per event of the manifest's log
(every state change, with its reason), scrubbed of secrets like everything shown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Never, Protocol, TextIO

from tqdm import tqdm

from pipeline.manifest import Event
from pipeline.redact import scrub

__all__ = [
    "DEFAULT_STATUS_EVERY",
    "LoggedProgress",
    "NullProgress",
    "Progress",
    "ProgressOptions",
    "StatusLines",
    "TqdmProgress",
    "event_line",
    "make_progress",
]

DEFAULT_STATUS_EVERY = 30.0
"""Seconds between status lines when the output is not a terminal."""

FINISHED = ("done", "failed", "timed_out", "cancelled", "unknown")


class Progress(Protocol):
    status_every: float | None
    """Seconds between ``status`` calls the display wants; None: none."""
    follows_events: bool
    """Whether ``events`` should be fed the manifest's events as they are logged."""

    def start(self, totals: Mapping[str, int]) -> None: ...
    def advance(self, provider: str, state: str) -> None: ...
    def note(self, provider: str, text: str) -> None: ...
    def status(self, counts: Mapping[str, Mapping[str, int]]) -> None: ...
    def follow(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """A shared run's counts by provider and state, every runner's: from the first
        call on, the display counts the run's finished jobs instead of its own."""
        ...

    def events(self, events: Sequence[Event]) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class ProgressOptions:
    """How a run reports: bars or status lines (unless quiet), and the event log."""

    quiet: bool = False
    status_every: float = DEFAULT_STATUS_EVERY
    verbose: bool = False
    log_file: Path | None = None


class NullProgress:
    """Shows nothing."""

    status_every: float | None = None
    follows_events = False

    def start(self, totals: Mapping[str, int]) -> None:
        return None

    def advance(self, provider: str, state: str) -> None:
        return None

    def note(self, provider: str, text: str) -> None:
        return None

    def status(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        return None

    def follow(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        return None

    def events(self, events: Sequence[Event]) -> None:
        return None

    def close(self) -> None:
        return None


class TqdmProgress(NullProgress):
    """A tqdm bar per provider; the postfix counts failures."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bars: dict[str, tqdm[Never]] = {}
        self._failed: dict[str, int] = {}
        self._run: _RunFinished | None = None  # a shared run: counted from its counts

    def start(self, totals: Mapping[str, int]) -> None:
        width = max((len(name) for name in totals), default=8)
        for position, (name, total) in enumerate(sorted(totals.items())):
            self._bars[name] = tqdm(
                total=total,
                desc=name.ljust(width),
                unit="job",
                position=position,
                file=self._stream,
                dynamic_ncols=True,
                leave=True,
            )
            self._failed[name] = 0

    def advance(self, provider: str, state: str) -> None:
        bar = self._bars.get(provider)
        if bar is None or self._run is not None:
            return
        if state != "done":
            self._failed[provider] += 1
            bar.set_postfix_str(f"{self._failed[provider]} not done", refresh=False)
        bar.update(1)

    def follow(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        if self._run is None:
            self._run = _RunFinished(counts)
        for name, bar in self._bars.items():
            finished, done = self._run.since(name, counts)
            bar.n = finished if bar.total is None else min(finished, int(bar.total))
            self._failed[name] = finished - done
            bar.set_postfix_str(f"{finished - done} not done" if finished > done else "", False)
            bar.refresh()

    def note(self, provider: str, text: str) -> None:
        self.write(scrub(f"{provider}: {text}"))

    def write(self, line: str) -> None:
        """A line above the bars."""
        tqdm.write(line, file=self._stream)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class StatusLines(NullProgress):
    """For a stream that is not a terminal: a line per provider at a steady interval
    (counts by state, jobs finished per minute, ETA), and notes as they come."""

    def __init__(
        self, stream: TextIO, every: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._write_line = _line_to(stream)
        self.status_every = every
        self._clock = clock
        self._started = clock()
        self._totals: dict[str, int] = {}
        self._finished: dict[str, int] = {}
        self._run: _RunFinished | None = None  # a shared run: counted from its counts
        self._last: Mapping[str, Mapping[str, int]] = {}  # the run's counts, last followed
        self._shown = False  # a status line was written

    def start(self, totals: Mapping[str, int]) -> None:
        self._started = self._clock()
        self._totals = dict(totals)
        self._finished = dict.fromkeys(totals, 0)

    def advance(self, provider: str, state: str) -> None:
        if self._run is None:
            self._finished[provider] = self._finished.get(provider, 0) + 1

    def follow(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        if self._run is None:
            self._run = _RunFinished(counts)
        self._last = counts
        for name in self._totals:
            self._finished[name] = self._run.since(name, counts)[0]

    def close(self) -> None:
        """A shared run's last line: the run as this runner leaves it (other runners
        may have finished jobs since the last line)."""
        if self._run is not None and self._shown:
            self.status(self._last)

    def note(self, provider: str, text: str) -> None:
        self._write(f"{_stamp(self._clock())} {provider}: {text}")

    def status(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._shown = True
        now = self._clock()
        minutes = max(now - self._started, 1e-9) / 60
        for name in sorted(self._totals):
            finished = self._finished.get(name, 0)
            rate = finished / minutes
            left = max(self._totals[name] - finished, 0)
            cells = ", ".join(f"{s} {n}" for s, n in _by_state(counts.get(name, {})))
            self._write(
                f"{_stamp(now)} {name}: {cells or 'no jobs'} · {rate:.1f} jobs/min · "
                f"ETA {_eta(left, rate)}"
            )

    def _write(self, line: str) -> None:
        self._write_line(scrub(line))


class LoggedProgress(NullProgress):
    """A display, plus one logfmt line per manifest event written to each sink."""

    follows_events = True

    def __init__(
        self,
        display: Progress,
        sinks: Sequence[Callable[[str], None]],
        on_close: Callable[[], None],
    ) -> None:
        self._display = display
        self._sinks = list(sinks)
        self._on_close = on_close
        self.status_every = display.status_every

    def start(self, totals: Mapping[str, int]) -> None:
        self._display.start(totals)

    def advance(self, provider: str, state: str) -> None:
        self._display.advance(provider, state)

    def note(self, provider: str, text: str) -> None:
        self._display.note(provider, text)

    def status(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._display.status(counts)

    def follow(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._display.follow(counts)

    def events(self, events: Sequence[Event]) -> None:
        for event in events:
            line = scrub(event_line(event))  # stored events are scrubbed; so is the log
            for sink in self._sinks:
                sink(line)

    def close(self) -> None:
        self._display.close()
        self._on_close()


class _RunFinished:
    """Jobs of a shared run finished since a display began, by every runner: each
    finished state's count now less its count then (never below zero, as a retry
    takes jobs out of a finished state)."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._then = {name: dict(states) for name, states in counts.items()}

    def since(self, provider: str, counts: Mapping[str, Mapping[str, int]]) -> tuple[int, int]:
        """Jobs of ``provider`` finished since, and how many of those are done."""
        now, then = counts.get(provider, {}), self._then.get(provider, {})
        by_state = {s: max(now.get(s, 0) - then.get(s, 0), 0) for s in FINISHED}
        return sum(by_state.values()), by_state["done"]


def event_line(event: Event) -> str:
    """One logfmt line: ``ts=… job=… provider=… event=transition from=… to=… reason=…``."""
    fields: list[tuple[str, str | None]] = [
        ("ts", _stamp(event.at, precise=True)),
        ("job", event.job_id),
        ("provider", event.provider),
        ("event", event.kind),
        ("from", None if event.from_state is None else event.from_state.value),
        ("to", None if event.to_state is None else event.to_state.value),
        ("reason", event.detail),
    ]
    return " ".join(f"{key}={_logfmt(value)}" for key, value in fields if value is not None)


def _logfmt(value: str) -> str:
    if value and not any(c in value for c in ' ="\\') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _stamp(at: float, *, precise: bool = False) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{text}.{int(at % 1 * 1000):03d}Z" if precise else text + "Z"


def _by_state(states: Mapping[str, int]) -> Iterator[tuple[str, int]]:
    """Finished states first (done leading), then the rest by name; zeros left out."""
    order = {state: i for i, state in enumerate(FINISHED)}
    for state in sorted(states, key=lambda s: (order.get(s, len(order)), s)):
        if states[state]:
            yield state, states[state]


def _eta(left: int, rate: float) -> str:
    if left == 0:
        return "0s"
    if rate <= 0:
        return "?"
    seconds = round(left / rate * 60)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def make_progress(
    *, quiet: bool = False, stream: TextIO | None = None, options: ProgressOptions | None = None
) -> Progress:
    """Bars on a terminal, status lines elsewhere, nothing with ``quiet``; with
    ``verbose`` or a log file, the event log as well."""
    options = options or ProgressOptions(quiet=quiet)
    stream = stream or sys.stderr
    display: Progress
    if options.quiet:
        display = NullProgress()
    elif stream.isatty():
        display = TqdmProgress(stream)
    else:
        display = StatusLines(stream, options.status_every)
    sinks: list[Callable[[str], None]] = []
    if options.verbose:
        sinks.append(display.write if isinstance(display, TqdmProgress) else _line_to(stream))
    log: TextIO | None = None
    if options.log_file is not None:
        log = options.log_file.open("a", encoding="utf-8", buffering=1)  # line-buffered
        sinks.append(_line_to(log))
    if not sinks:
        return display
    return LoggedProgress(display, sinks, log.close if log is not None else lambda: None)


def _line_to(stream: TextIO) -> Callable[[str], None]:
    """Write and flush a line; a stream that fails (its reader gone, a full disk) is
    given up, silently: reporting must never stop a run that pays for jobs."""
    broken = False

    def write(line: str) -> None:
        nonlocal broken
        if broken:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            broken = True

    return write
