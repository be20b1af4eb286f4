"""Progress display behind a small interface; tqdm lives only here.

One bar per provider counting finished jobs (done, failed, …) out of the jobs that run
has to handle. Quiet when stderr is not a terminal or with ``--quiet``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Never, Protocol, TextIO

from tqdm import tqdm

from pipeline.redact import scrub

__all__ = ["NullProgress", "Progress", "TqdmProgress", "make_progress"]


class Progress(Protocol):
    def start(self, totals: Mapping[str, int]) -> None: ...
    def advance(self, provider: str, state: str) -> None: ...
    def note(self, provider: str, text: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """Shows nothing."""

    def start(self, totals: Mapping[str, int]) -> None:
        return None

    def advance(self, provider: str, state: str) -> None:
        return None

    def note(self, provider: str, text: str) -> None:
        return None

    def close(self) -> None:
        return None


class TqdmProgress:
    """A tqdm bar per provider; the postfix counts failures."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bars: dict[str, tqdm[Never]] = {}
        self._failed: dict[str, int] = {}

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
        if bar is None:
            return
        if state != "done":
            self._failed[provider] += 1
            bar.set_postfix_str(f"{self._failed[provider]} not done", refresh=False)
        bar.update(1)

    def note(self, provider: str, text: str) -> None:
        bar = self._bars.get(provider)
        if bar is not None:
            bar.write(scrub(f"{provider}: {text}"), file=self._stream)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def make_progress(*, quiet: bool, stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return NullProgress()
    return TqdmProgress(stream)
