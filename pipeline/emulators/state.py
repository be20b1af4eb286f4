"""One emulator's world: knobs, clock, dice, tasks, media, ledger, counters, limiter.

``admit`` is the gate every API request passes first (key, limiter, injected
faults); each emulator renders a refusal in its own API's words. With a state file
(``persist_to``), tasks, media, charges and the signing secret outlive the process:
``charge`` and ``save`` write them before the answer that reveals them leaves.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.emulators.clock import Clock, system_clock
from pipeline.emulators.codec import task_doc, task_from_doc
from pipeline.emulators.faults import Dice, Fault, injected_fault
from pipeline.emulators.knobs import Knobs
from pipeline.emulators.ledger import Charge, Ledger, Stats, key_fingerprint
from pipeline.emulators.limiter import Quota, RateLimiter
from pipeline.emulators.media import DEFAULT_CACHE_BYTES, MediaStore
from pipeline.emulators.persist import Row, StateFile
from pipeline.emulators.tasks import Task, TaskStore

__all__ = ["STATE_KEY", "Admission", "EmulatorState", "Refusal"]

ANONYMOUS = "anonymous"


class Refusal(enum.Enum):
    """Why a request was turned away before it was handled."""

    MISSING_KEY = "missing_key"
    INVALID_KEY = "invalid_key"
    FORBIDDEN = "forbidden"
    NO_CREDIT = "no_credit"
    LIMIT_EXCEEDED = "limit_exceeded"
    """The real per-key limiter (requests_per_minute) said no."""
    RATE_LIMITED = "rate_limited"
    """An injected 429 (rate_limit_rate)."""
    SERVER_ERROR = "server_error"
    UNAVAILABLE = "unavailable"


_FAULT_REFUSALS = {
    Fault.RATE_LIMITED: Refusal.RATE_LIMITED,
    Fault.SERVER_ERROR: Refusal.SERVER_ERROR,
    Fault.UNAVAILABLE: Refusal.UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class Admission:
    """The gate's verdict on one API request."""

    key: str
    """Fingerprint of the caller's API key (``anonymous`` when there was none)."""
    quota: Quota
    refusal: Refusal | None = None
    retry_after: int | None = None
    """Seconds for a Retry-After header, when the refusal is a 429 and the knob asks.

    Only ``LIMIT_EXCEEDED`` and ``RATE_LIMITED`` carry it, and every API answers those
    with 429, so ``app.retry_after_headers`` needs no status code."""


class EmulatorState:
    """Everything one emulator knows; tests reach it in-process as ``running.state``."""

    def __init__(
        self,
        provider: str,
        knobs: Knobs,
        *,
        clock: Clock = system_clock,
        media_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.provider = provider
        self.knobs = knobs
        self.clock = clock
        self.dice = Dice(knobs.seed)
        self.ledger = Ledger()
        self.stats = Stats()
        self.tasks = TaskStore()
        self.media = MediaStore(cache_bytes=media_cache_bytes)
        self.limiter = RateLimiter()
        self.store: StateFile | None = None
        self.record_type: type[Any] | None = None
        """The emulator's ``task.extra`` dataclass, to restore tasks from a state file."""
        self.restore_hooks: list[Callable[[StateFile], None]] = []
        """Called after ``persist_to`` restored the common world (PixAI rebuilds its own)."""
        self.task_end: Callable[[Task], float] = _finished_at
        """When a task stops being in progress (PixAI: earlier, when it was cancelled)."""
        self.file_paths: tuple[str, ...] = ("/files/",)
        """Path prefixes of the file host: downloads, not API requests."""
        self._unsaved: list[Row] = []

    def persist_to(self, store: StateFile) -> None:
        """Restore what ``store`` keeps, then write every change there (a restart forgets
        nothing a client was told). Call before serving, after replacing the clock.

        Raises ``PipelineError`` when the file is another API's or cannot be read."""
        meta = dict(store.rows("meta"))
        owner = meta.setdefault("provider", self.provider)
        if owner != self.provider:
            raise store.unusable(f"it holds the {owner} emulator's world, not {self.provider}'s")
        if "media_secret" not in meta:
            meta["media_secret"] = self.media.secret
            store.write([("meta", key, value) for key, value in meta.items()])
        try:
            self.media.restore(str(meta["media_secret"]), store.rows("media"), store.rows("alias"))
            for _, doc in store.rows("task"):
                self.tasks.add(task_from_doc(doc, self.record_type))
            self.ledger.charges.extend(store.charges())
            for hook in self.restore_hooks:
                hook(store)
        except (KeyError, TypeError, ValueError) as exc:  # not what this version writes
            raise store.unusable(f"unreadable entry ({type(exc).__name__}: {exc})") from exc
        self.store = store
        self.media.journal = self.note

    def note(self, kind: str, object_id: str, doc: Any) -> None:
        """Remember a new object for the state file; the next ``charge``/``save`` writes it."""
        if self.store is not None:
            self._unsaved.append((kind, object_id, doc))

    def save(self, task: Task | None = None, charges: tuple[Charge, ...] = ()) -> None:
        """Write ``task`` (as it is now), the objects noted since and ``charges``, in one
        durable transaction. Nothing to do without a state file."""
        if self.store is None:
            return
        rows = [*self._unsaved]
        if task is not None:
            rows.append(("task", task.id, task_doc(task)))
        self.store.write(rows, charges)
        self._unsaved.clear()

    def configure(self, changes: Mapping[str, Any]) -> Knobs:
        """Apply knob changes (validated; ValueError leaves the knobs as they were)."""
        knobs = self.knobs.updated(changes)
        if "seed" in changes:
            self.dice.reseed(knobs.seed)
        self.knobs = knobs
        return knobs

    def reset(self) -> None:
        """Forget tasks, media, charges, counters and quotas; keep the knobs; reseed."""
        if self.store is not None:
            self.store.clear()
        self._unsaved.clear()
        self.ledger.clear()
        self.stats.clear()
        self.tasks.clear()
        self.media.clear()
        self.limiter.clear()
        self.dice.reseed(self.knobs.seed)

    def stats_dict(self) -> dict[str, Any]:
        """The counters of ``Stats`` plus the tasks in progress now and at most at once."""
        active, peak = self.tasks.overlap(self.clock(), self.task_end)
        return {**self.stats.to_dict(), "active_tasks": active, "peak_tasks": peak}

    def admit(
        self, api_key: str | None, *, credit_documented: bool = False, route: str | None = None
    ) -> Admission:
        """Check the key, count the request against its quota, then roll for faults
        (on ``route`` only when the ``fault_routes`` knob names it)."""
        knobs, now = self.knobs, self.clock()
        if not api_key:
            return self._refuse(ANONYMOUS, now, Refusal.MISSING_KEY)
        key = key_fingerprint(api_key)
        refusal = _key_refusal(knobs, api_key, credit_documented)
        if refusal is not None:
            return self._refuse(key, now, refusal)
        self.limiter.window_seconds = knobs.rate_window
        quota = self.limiter.hit(key, now, knobs.requests_per_minute)
        if not quota.allowed:
            self.stats.faults["limit_exceeded"] += 1
            after = quota.retry_after(now) if knobs.retry_after is not None else None
            return Admission(key, quota, Refusal.LIMIT_EXCEEDED, after)
        routes = knobs.fault_routes
        fault = injected_fault(knobs, self.dice) if routes is None or route in routes else None
        if fault is None:
            return Admission(key, quota)
        self.stats.faults[_FAULT_REFUSALS[fault].value] += 1
        after = None
        if fault is Fault.RATE_LIMITED and knobs.retry_after is not None:
            after = math.ceil(knobs.retry_after)
        return Admission(key, quota, _FAULT_REFUSALS[fault], after)

    def charge(self, task: Task, route: str, body: Any) -> None:
        """Record the accepted submit that created ``task`` in the ledger, and make the
        task durable with it; if that write fails, the task is forgotten (a 500)."""
        charge = Charge(
            at=task.timeline.created_at, task_id=task.id, route=route, key=task.owner, body=body
        )
        try:
            self.save(task, (charge,))
        except BaseException:
            self.tasks.discard(task.id)
            raise
        self.ledger.charges.append(charge)

    def drop_after_create(self) -> bool:
        """Roll ``drop_after_create_rate``; on a hit count a ``dropped`` fault and say so.

        The caller then drops the connection instead of answering the submit.
        """
        if not self.dice.roll(self.knobs.drop_after_create_rate):
            return False
        self.stats.faults["dropped"] += 1
        return True

    def error_after_create(self) -> int | None:
        """Roll ``error_after_create_rate``; on a hit count an ``error_after_create`` fault
        and return the status to answer the submit with (see ``app.gateway_error``)."""
        if not self.dice.roll(self.knobs.error_after_create_rate):
            return None
        self.stats.faults["error_after_create"] += 1
        return self.knobs.error_after_create_status

    def _refuse(self, key: str, now: float, refusal: Refusal) -> Admission:
        quota = self.limiter.peek(key, now, self.knobs.requests_per_minute)
        return Admission(key, quota, refusal)


def _finished_at(task: Task) -> float:
    return task.timeline.finished_at


def _key_refusal(knobs: Knobs, api_key: str, credit_documented: bool) -> Refusal | None:
    if knobs.invalid_key_prefix and api_key.startswith(knobs.invalid_key_prefix):
        return Refusal.INVALID_KEY
    if knobs.forbidden_key_prefix and api_key.startswith(knobs.forbidden_key_prefix):
        return Refusal.FORBIDDEN
    broke = knobs.broke_key_prefix
    if credit_documented and broke and api_key.startswith(broke):
        return Refusal.NO_CREDIT
    return None


STATE_KEY = web.AppKey("emulator_state", EmulatorState)
