"""Running emulators on loopback: ``serve`` (async, for tests) and ``run_forever`` (CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.emulators.clock import Clock
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.persist import StateFile
from pipeline.emulators.registry import emulator_factory, emulator_names
from pipeline.emulators.state import STATE_KEY, EmulatorState

__all__ = ["RunningEmulator", "run_forever", "serve"]

ALL = "*"
"""Key of ``knobs`` whose values apply to every emulator (named entries override)."""


SHUTDOWN_SECONDS = 2.0
"""How long stopping waits for requests still in flight."""


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """One emulator listening on a port."""

    name: str
    base_url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> EmulatorState:
        """The emulator's world, in-process: ledger, knobs, stats, clock."""
        return self.app[STATE_KEY]


@contextlib.asynccontextmanager
async def serve(
    names: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    knobs: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Clock | None = None,
    state_dirs: Mapping[str, Path] | None = None,
) -> AsyncIterator[dict[str, RunningEmulator]]:
    """Serve the named emulators, each on its own port, until the block exits.

    ``port=0`` gives each an ephemeral port; a fixed ``port`` gives ``port``, ``port+1``…
    ``knobs`` maps an emulator name (or ``"*"`` for all) to knob values. ``clock``
    replaces every emulator's clock (tests pass a ManualClock). ``state_dirs`` maps an
    emulator name to the directory where its world is kept across restarts (see
    ``persist``); the others remember nothing once stopped. Needs an asyncio loop.
    """
    settings = _knobs_for(names, knobs or {})
    running: dict[str, RunningEmulator] = {}
    stores: list[StateFile] = []
    try:
        for index, name in enumerate(names):
            app = emulator_factory(name)(settings[name])
            state = app[STATE_KEY]
            if clock is not None:
                state.clock = clock
            directory = (state_dirs or {}).get(name)
            if directory is not None:
                stores.append(StateFile(directory))
                state.persist_to(stores[-1])
            running[name] = await _start(name, app, host, port + index if port else 0)
        yield running
    finally:
        for emulator in running.values():
            await emulator.runner.cleanup()
        for store in stores:
            store.close()


def run_forever(
    names: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    knobs: Mapping[str, Mapping[str, Any]] | None = None,
    announce: Callable[[str, str], None],
    state: Path | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, calling ``announce(name, base_url)`` once each listens.

    ``state``: keep each emulator's world in ``state/<name>/`` across restarts."""
    state_dirs = None if state is None else {name: Path(state) / name for name in names}

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with serve(
            names, host=host, port=port, knobs=knobs, state_dirs=state_dirs
        ) as running:
            for name, emulator in running.items():
                announce(name, emulator.base_url)
            await stop.wait()

    asyncio.run(main())


def _knobs_for(names: Sequence[str], knobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Knobs]:
    known = emulator_names()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown emulator(s) {unknown}; available: {sorted(known)}")
    strays = sorted(set(knobs) - set(names) - {ALL})
    if strays:
        raise ValueError(f"knobs given for emulator(s) not being served: {strays}")
    shared = knobs.get(ALL, {})
    return {name: Knobs.from_mapping({**shared, **knobs.get(name, {})}) for name in names}


async def _start(name: str, app: web.Application, host: str, port: int) -> RunningEmulator:
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return RunningEmulator(name, f"http://{shown}:{bound_port}", app, runner)
