"""Local emulators of the provider APIs, served over real HTTP on loopback.

They are a separate world (a fake server): nothing here imports the rest of pipeline.

    async with serve(["pixellabs"], knobs={"pixellabs": {"task_seconds": 0.1}}) as running:
        base_url = running["pixellabs"].base_url
        ledger = running["pixellabs"].state.ledger

Each emulator has the same shared parts: knobs (``Knobs``), a charge ledger, request
counters, a media store with a CDN-like file host (``/files/…``), seeded fault
injection, and admin endpoints under ``/_emulator/`` (see ``admin``).
"""

from __future__ import annotations

from pipeline.emulators.clock import Clock, ManualClock, system_clock
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.ledger import Charge, Ledger, Stats, key_fingerprint
from pipeline.emulators.registry import EMULATORS, emulator_factory, emulator_names
from pipeline.emulators.server import RunningEmulator, run_forever, serve
from pipeline.emulators.state import EmulatorState

__all__ = [
    "EMULATORS",
    "Charge",
    "Clock",
    "EmulatorState",
    "Knobs",
    "Ledger",
    "ManualClock",
    "RunningEmulator",
    "Stats",
    "emulator_factory",
    "emulator_names",
    "key_fingerprint",
    "run_forever",
    "serve",
    "system_clock",
]
