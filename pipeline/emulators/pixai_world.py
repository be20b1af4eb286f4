"""PixAI's world beyond the shared framework: tasks in PixAI's words, media ids, batch
grids, the per-account event bus and the one ticker that turns phase changes into
``taskUpdated`` events.

Task state is read off the clock (``tasks.Timeline``) like every emulator's; PixAI adds
cancellation (``cancelGenerationTask``) on top. Because subscribers must *hear* about
phase changes, one background ticker per app (not one per task) walks a heap of due
phase changes and publishes each on the owner's event bus.

Shapes (platform.pixai.art docs, pixai-client-js; GUESS where marked):

- ``Task.outputs`` when completed: ``{duration, detailParameters, mediaId, extra,
  batch?: [{seed, mediaId, extra}]}``; ``batch`` only when ``batchSize`` > 1, and then
  ``mediaId`` is a 2x2 grid of the batch (third-party observation).
- failed: ``{duration, error: {code, message}}`` (GUESS: the failure shape is not
  documented); cancelled: ``{reason}`` (the docs say the optional reason is "stored in
  outputs"; the key name is a GUESS).
- task and media ids are long decimal strings, as PixAI's are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulators.ledger import key_fingerprint
from pipeline.emulators.persist import StateFile
from pipeline.emulators.render import GridImage, ImageSpec
from pipeline.emulators.state import EmulatorState
from pipeline.emulators.tasks import Phase, Task, Timeline, extra_of, unique_id

__all__ = [
    "MAX_ACTIVE_TASKS",
    "EventStream",
    "GridImage",
    "Invalid",
    "PixaiWorld",
    "Record",
    "TooManyTasks",
    "WsSettings",
]

PROVIDER = "PixAI"
MAX_ACTIVE_TASKS = 10
"""platform.pixai.art/docs/quick-start/limits: at most 10 pending/running tasks."""
MAX_BATCH = 4
"""The grid is 2x2, so a batch has at most 4 images (GUESS: not stated as a limit)."""
DEFAULT_SIZE = 512
SIZE_RANGE = (64, 2048)
"""Allowed width/height, multiples of 8 (GUESS)."""
TICK_SECONDS = 0.05
MEDIA_KIND = "pixai_media"
"""Kind of PixAI's media ids in the state file."""
QUEUE_SIZE = 1000
"""Events buffered per subscription before new ones are dropped."""
STATUS_WORDS = {
    Phase.QUEUED: "waiting",
    Phase.RUNNING: "running",
    Phase.SUCCEEDED: "completed",
    Phase.FAILED: "failed",
}
CANCELLED = "cancelled"
TERMINAL_WORDS = frozenset({"completed", "failed", CANCELLED})
FAILURES = (
    ("NSFW_CONTENT", "The generated image was blocked by the content policy."),
    ("GENERATION_FAILED", "Generation failed on the worker. Please retry."),
    ("TIMEOUT", "The task did not finish in time."),
)


class Invalid(ValueError):
    """A task parameter breaks the documented rules."""


class TooManyTasks(Exception):
    """The account already has ``MAX_ACTIVE_TASKS`` waiting or running."""


@dataclass
class WsSettings:
    """Switches of the WebSocket side, changed through ``/_emulator/ws/config``.

    They live here rather than in the shared ``Knobs`` because they only make sense for
    an API with a subscription; the knob ``event_loss_rate`` raises the loss too.
    """

    event_loss_rate: float = 0.0
    """Probability that one taskUpdated event is not sent to one subscriber."""
    foreign_events: bool = True
    """Also publish events of tasks the account made elsewhere (the web UI)."""
    down_until: float = 0.0
    """``time.monotonic()`` before which WebSocket upgrades are refused (503)."""


@dataclass
class Record:
    """What PixAI shows about a task beyond the common ``Task``."""

    parameters: dict[str, Any]
    user_id: str
    main_media: str
    batch: list[tuple[int, str]]  # (seed, media id); empty for a single image
    detail: dict[str, Any]
    cancelled_at: float | None = None
    cancel_reason: str | None = None

    def __post_init__(self) -> None:  # from a state file, the pairs come back as lists
        self.batch = [(int(seed), str(media_id)) for seed, media_id in self.batch]


@dataclass(frozen=True, slots=True)
class MediaEntry:
    id: str
    token: str
    thumbnail: str
    width: int
    height: int


class EventStream:
    """One subscription's events: an async iterator over a bounded queue."""

    def __init__(self, bus: EventBus, owner: str) -> None:
        self._bus = bus
        self._owner = owner
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        bus.add(owner, self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()

    async def aclose(self) -> None:
        self._bus.discard(self._owner, self)


class EventBus:
    """Per-account subscribers; ``publish`` loses events as ``event_loss_rate`` says."""

    def __init__(self) -> None:
        self._streams: defaultdict[str, set[EventStream]] = defaultdict(set)
        self.counters: Counter[str] = Counter()

    def add(self, owner: str, stream: EventStream) -> None:
        self._streams[owner].add(stream)

    def discard(self, owner: str, stream: EventStream) -> None:
        streams = self._streams.get(owner)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[owner]

    def subscriptions(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def publish(self, owner: str, event: dict[str, Any], lose: Any) -> None:
        """Send ``event`` to every subscription of ``owner``; ``lose()`` says drop one."""
        for stream in list(self._streams.get(owner, ())):
            if lose():
                self.counters["events_lost"] += 1
                continue
            try:
                stream.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.counters["events_overflowed"] += 1
            else:
                self.counters["events_sent"] += 1


@dataclass
class PixaiWorld:
    """PixAI's additions to one ``EmulatorState``."""

    state: EmulatorState
    ws: WsSettings = field(default_factory=WsSettings)
    bus: EventBus = field(default_factory=EventBus)
    media: dict[str, MediaEntry] = field(default_factory=dict)
    sockets: set[Any] = field(default_factory=set)
    _active: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _due: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.state.restore_hooks.append(self.restore)
        self.state.task_end = ended_at

    def restore(self, store: StateFile) -> None:
        """Rebuild media ids, the accounts' active tasks and the phase changes still to
        come from a state file; changes that fell in the downtime are not announced."""
        for media_id, doc in store.rows(MEDIA_KIND):
            self.media[media_id] = MediaEntry(**doc)
        now = self.state.clock()
        for task in self.state.tasks:
            if status_word(task, now) in TERMINAL_WORDS:
                continue
            self._active[task.owner].add(task.id)
            for at in (task.timeline.started_at, task.timeline.finished_at):
                if at > now:
                    self._schedule(at, task.id)

    # -- tasks ------------------------------------------------------------------------

    def create_task(self, owner: str, parameters: dict[str, Any]) -> Task:
        """A new task (validated, counted against the limit) with its media registered."""
        clean = validated(parameters)
        if self.active_count(owner) >= MAX_ACTIVE_TASKS:
            raise TooManyTasks
        state, now = self.state, self.state.clock()
        line = Timeline.draw(state.knobs, state.dice, now)
        seed = clean["seed"] if clean["seed"] is not None else state.dice.randbits(31)
        record = self._record(owner, parameters, clean, seed)
        task = Task(
            id=unique_id(_numeric_id, state.tasks),
            owner=owner,
            timeline=line,
            params=parameters,
            media=self.media[record.main_media].token,
            failure=state.dice.choice(FAILURES) if line.fails else None,
            extra=record,
        )
        state.tasks.add(task)
        self._active[owner].add(task.id)
        self._schedule(line.started_at, task.id)
        self._schedule(line.finished_at, task.id)
        return task

    def owned(self, task_id: str, owner: str) -> Task | None:
        task = self.state.tasks.get(task_id)
        return task if task is not None and task.owner == owner else None

    def cancel(self, task: Task, reason: str | None) -> None:
        """Cancel a waiting or running task now; finished tasks stay as they are."""
        now = self.state.clock()
        record = extra_of(task, Record)
        if status_word(task, now) in TERMINAL_WORDS:
            return
        record.cancelled_at, record.cancel_reason = now, reason
        self.state.save(task)
        self._publish(task, now)

    def active_count(self, owner: str) -> int:
        now = self.state.clock()
        active = self._active[owner]
        for task_id in list(active):
            task = self.state.tasks.get(task_id)
            if task is None or status_word(task, now) in TERMINAL_WORDS:
                active.discard(task_id)
        return len(active)

    # -- views ------------------------------------------------------------------------

    def task_view(self, task: Task, at: float | None = None) -> dict[str, Any]:
        """The GraphQL ``Task`` as it stood at ``at`` (default: now)."""
        now = self.state.clock() if at is None else at
        record, line = extra_of(task, Record), task.timeline
        word = status_word(task, now)
        ended = line.finished_at if record.cancelled_at is None else record.cancelled_at
        started = word != "waiting" and (word != CANCELLED or ended >= line.started_at)
        return {
            "id": task.id,
            "userId": record.user_id,
            "parameters": record.parameters,
            "outputs": self._outputs(task, word),
            "status": word,
            "startedAt": _iso(line.started_at) if started else None,
            "endAt": _iso(ended) if word in TERMINAL_WORDS else None,
            "createdAt": _iso(line.created_at),
            "updatedAt": _iso(_updated_at(task, now)),
        }

    def media_view(self, media_id: str, base: str) -> dict[str, Any] | None:
        entry = self.media.get(media_id)
        if entry is None or self.state.media.media(entry.token) is None:
            return None
        now, ttl = self.state.clock(), self.state.knobs.url_ttl
        urls = [
            {
                "variant": "PUBLIC",
                "url": base
                + self.state.media.path(
                    entry.token, now=now, ttl=ttl, stale=self.state.knobs.stale_urls
                ),
            },
            {
                "variant": "THUMBNAIL",
                "url": base + self.state.media.path(entry.thumbnail, now=now, ttl=ttl),
            },
        ]
        return {
            "id": entry.id,
            "type": "IMAGE",
            "width": entry.width,
            "height": entry.height,
            "urls": urls,
            "imageType": "png",
        }

    def _outputs(self, task: Task, word: str) -> dict[str, Any]:
        record, line = extra_of(task, Record), task.timeline
        if word == "completed":
            outputs: dict[str, Any] = {
                "duration": round(line.finished_at - line.started_at, 3),
                "detailParameters": record.detail,
                "mediaId": record.main_media,
                "extra": {},
            }
            if record.batch:
                outputs["batch"] = [
                    {"seed": seed, "mediaId": media_id, "extra": {}}
                    for seed, media_id in record.batch
                ]
            return outputs
        if word == "failed" and task.failure is not None:
            code, message = task.failure
            ran = round(line.finished_at - line.started_at, 3)
            return {"duration": ran, "error": {"code": code, "message": message}}
        if word == CANCELLED:
            return {"reason": record.cancel_reason} if record.cancel_reason else {}
        return {}

    # -- events -----------------------------------------------------------------------

    async def run_ticker(self) -> None:
        """Publish a taskUpdated event at every phase change, for the app's lifetime."""
        while True:
            self.tick()
            await asyncio.sleep(TICK_SECONDS)

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        ticker = asyncio.create_task(self.run_ticker())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    def tick(self) -> None:
        now = self.state.clock()
        while self._due and self._due[0][0] <= now:
            due, _, task_id = heapq.heappop(self._due)
            task = self.state.tasks.get(task_id)
            if task is None or extra_of(task, Record).cancelled_at is not None:
                continue
            self._publish(task, due)
            if due == task.timeline.started_at and self.ws.foreign_events:
                self._publish_foreign(task.owner, due)

    def _publish(self, task: Task, at: float) -> None:
        event = {"taskUpdated": self.task_view(task, at)}
        self.bus.publish(task.owner, event, self._lose)

    def _publish_foreign(self, owner: str, at: float) -> None:
        """A task of the same account made elsewhere (the web UI): nobody here waits for it."""
        stamp = _iso(at)
        view = {
            "id": unique_id(_numeric_id, self.state.tasks),
            "userId": _user_id(owner),
            "parameters": {"prompts": "made in the web UI"},
            "outputs": {"mediaId": _numeric_id(), "duration": 1.0, "extra": {}},
            "status": "completed",
            "startedAt": stamp,
            "endAt": stamp,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        self.bus.counters["foreign_events"] += 1
        self.bus.publish(owner, {"taskUpdated": view}, self._lose)

    def _lose(self) -> bool:
        rate = max(self.ws.event_loss_rate, self.state.knobs.event_loss_rate)
        return self.state.dice.roll(rate)

    def _schedule(self, at: float, task_id: str) -> None:
        heapq.heappush(self._due, (at, next(self._seq), task_id))

    # -- media ------------------------------------------------------------------------

    def _record(
        self, owner: str, parameters: dict[str, Any], clean: dict[str, Any], seed: int
    ) -> Record:
        width, height, count = clean["width"], clean["height"], clean["batchSize"]
        prompt = clean["prompts"]
        details = (f"{width}x{height}", f"model {clean['modelId']}")
        cells = [
            ImageSpec(PROVIDER, prompt, seed + i, width, height, details) for i in range(count)
        ]
        batch = [(cell.seed, self._add_media(cell)) for cell in cells] if count > 1 else []
        if batch:
            main = self._add_media(GridImage(tuple(cells), width, height))
        else:
            main = self._add_media(cells[0])
        detail = {**parameters, **clean, "seed": seed}
        return Record(dict(parameters), _user_id(owner), main, batch, detail)

    def _add_media(self, image: ImageSpec | GridImage) -> str:
        store = self.state.media
        token = store.add(image)
        thumb_w, thumb_h = max(8, image.width // 4), max(8, image.height // 4)
        seed = image.seed if isinstance(image, ImageSpec) else image.cells[0].seed
        prompt = image.prompt if isinstance(image, ImageSpec) else image.cells[0].prompt
        thumbnail = store.add(ImageSpec(PROVIDER, prompt, seed, thumb_w, thumb_h))
        media_id = unique_id(_numeric_id, self.media)
        entry = MediaEntry(media_id, token, thumbnail, image.width, image.height)
        self.media[media_id] = entry
        self.state.note(MEDIA_KIND, media_id, dataclasses.asdict(entry))
        return media_id


def status_word(task: Task, now: float) -> str:
    record = extra_of(task, Record)
    if record.cancelled_at is not None and now >= record.cancelled_at:
        return CANCELLED
    return STATUS_WORDS[task.phase(now)]


def ended_at(task: Task) -> float:
    """When ``task`` stops waiting or running: at its end, or earlier when cancelled."""
    cancelled_at = extra_of(task, Record).cancelled_at
    finished_at = task.timeline.finished_at
    return finished_at if cancelled_at is None else min(finished_at, cancelled_at)


def validated(parameters: dict[str, Any]) -> dict[str, Any]:
    """The fields the emulator uses, checked, with defaults; other fields pass untouched."""
    prompts = parameters.get("prompts", "")
    if not isinstance(prompts, str):
        raise Invalid("parameters.prompts must be a string")
    return {
        "prompts": prompts,
        "width": _size(parameters, "width"),
        "height": _size(parameters, "height"),
        "batchSize": _batch_size(parameters),
        "seed": _seed(parameters),
        "modelId": str(parameters.get("modelId") or "1648918127446573124"),
    }


def _size(parameters: dict[str, Any], name: str) -> int:
    value = parameters.get(name, DEFAULT_SIZE)
    low, high = SIZE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"parameters.{name} must be an integer from {low} to {high}")
    if value % 8:
        raise Invalid(f"parameters.{name} must be a multiple of 8")
    return value


def _batch_size(parameters: dict[str, Any]) -> int:
    value = parameters.get("batchSize", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise Invalid(f"parameters.batchSize must be an integer from 1 to {MAX_BATCH}")
    return value


def _seed(parameters: dict[str, Any]) -> int | None:
    value = parameters.get("seed")
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise Invalid("parameters.seed must be a number or a numeric string from 0 to 2^32-1")
    return value


def _updated_at(task: Task, now: float) -> float:
    record, line = extra_of(task, Record), task.timeline
    if record.cancelled_at is not None and now >= record.cancelled_at:
        return record.cancelled_at
    if now >= line.finished_at:
        return line.finished_at
    return line.started_at if now >= line.started_at else line.created_at


def _user_id(owner: str) -> str:
    return str(int(key_fingerprint(owner).rpartition(":")[2][:13], 16))


def _numeric_id() -> str:
    return str(10**18 + secrets.randbelow(9 * 10**18))


def _iso(epoch: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch % 1 * 1000):03d}Z"
