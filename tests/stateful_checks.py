"""The invariants of ``test_reliability_stateful``: what must hold after every step.

Each check reads only what a user could inspect: the emulators' charge ledgers, the files
under the output root and the manifest (opened read-only with plain sqlite3, so the
checks do not trust the code under test to read its own store). Each returns a list of
problems in words; an empty list means the promise held.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_EDGES", "RunWindow", "Violation", "World", "check_all", "jobs_in", "jobs_of"]

Edge = tuple[str, str]


def _edges(sources: Iterable[str], targets: Iterable[str]) -> frozenset[Edge]:
    return frozenset((a, b) for a in sources for b in targets)


FORWARD = frozenset(
    {
        ("pending", "submitting"),
        ("submitting", "submitted"),
        ("submitted", "running"),
        ("submitted", "succeeded"),  # finished between two looks: running never seen
        ("running", "succeeded"),
        ("succeeded", "downloading"),
        ("downloading", "done"),
    }
)
"""The happy path of docs/architecture.md, "Job states"."""
ENDINGS = (
    _edges(["submitting"], ["unknown", "failed"])  # ambiguous submit; refused for good
    | {("pending", "cancelled")}
    | _edges(["submitted", "running"], ["failed", "cancelled", "timed_out"])
    | _edges(["succeeded", "downloading"], ["failed"])
)
"""Into an end state: ``unknown`` after a submit, or ``failed / cancelled / timed_out``."""
RESETS = frozenset(
    {
        ("downloading", "succeeded"),  # a download paused; the outputs are still remote
        ("submitting", "pending"),  # a refusal that guarantees nothing was created
        ("unknown", "submitted"),  # reconciled with the provider
    }
)
"""Documented steps back that lose nothing: no remote id, no paid task, no file."""
RETRIES = _edges(["failed", "timed_out", "cancelled"], ["pending"]) | {("unknown", "pending")}
"""Resets to a fresh start that forget the remote id; each needs its option (FLAG_EDGES)."""
REFOLLOW_TARGETS = ("submitted", "running", "succeeded")
REFOLLOWS = _edges(["failed", "timed_out", "cancelled"], REFOLLOW_TARGETS)
"""``--retry-failed`` (or a resume, for ``timed_out``) following or fetching the recorded
task again instead of paying for a new one."""

ALLOWED_EDGES: frozenset[Edge] = FORWARD | ENDINGS | RESETS | RETRIES | REFOLLOWS
"""Every transition a job may make, written from the design and issue 10, not from
``models.TRANSITIONS`` (which the manifest already enforces on itself)."""

FLAG_EDGES: Mapping[Edge, str] = {
    **dict.fromkeys(
        _edges(["failed", "cancelled"], ["pending", *REFOLLOW_TARGETS]), "retry_failed"
    ),
    ("timed_out", "pending"): "retry_failed",
    ("unknown", "pending"): "resubmit_unknown",
}
"""Edges only a run with that option may make."""


class Violation(AssertionError):
    """A promise of issue 10 was broken; the message lists how."""


@dataclass
class RunWindow:
    """One ``pipeline run`` of the test: its options, when it ran, how it ended."""

    retry_failed: bool = False
    resubmit_unknown: bool = False
    start: float = field(default_factory=time.time)
    end: float | None = None
    killed: bool = False
    returncode: int | None = None
    output: str = ""

    def close(self, returncode: int, output: str) -> None:
        self.end, self.returncode, self.output = time.time(), returncode, output

    def holds(self, at: float, slack: float = 0.05) -> bool:
        end = self.end if self.end is not None else time.time()
        return self.start - slack <= at <= end + slack

    def describe(self) -> str:
        flags = [f for f in ("retry_failed", "resubmit_unknown") if getattr(self, f)]
        how = "killed" if self.killed else f"exit {self.returncode}"
        return f"run({', '.join(flags) or 'plain'}; {how})"


@dataclass
class World:
    """What the test knows beside the system: its runs, and each job's remote id so far."""

    root: Path
    providers: Sequence[str]
    prompts: Sequence[str]
    runs: list[RunWindow] = field(default_factory=list)
    remote_ids: dict[str, str] = field(default_factory=dict)
    checked_runs: int = 0

    def record(self, window: RunWindow) -> None:
        self.runs.append(window)


@dataclass(frozen=True)
class Snapshot:
    """The manifest as read after a step: jobs, their transition events and outputs."""

    jobs: dict[str, dict[str, Any]]
    events: dict[str, list[dict[str, Any]]]
    outputs: dict[str, list[dict[str, Any]]]


def read_manifest(root: Path) -> Snapshot | None:
    path = root / "manifest.sqlite"
    if not path.exists():
        return None
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "jobs" not in tables:
            return None  # killed before the schema was committed
        jobs = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute("SELECT * FROM events WHERE kind = 'transition' ORDER BY id"):
            events[r["job_id"]].append(dict(r))
        outputs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute("SELECT * FROM outputs ORDER BY job_id, idx"):
            outputs[r["job_id"]].append(dict(r))
    finally:
        conn.close()
    return Snapshot(jobs, dict(events), dict(outputs))


def jobs_in(root: Path, state: str) -> int:
    """How many jobs the manifest shows in ``state`` now (0 while it does not exist)."""
    path = root / "manifest.sqlite"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or being created right now
        return 0
    return int(row[0])


def jobs_of(root: Path) -> list[dict[str, Any]]:
    """Every job row of the manifest (none while it does not exist)."""
    snapshot = read_manifest(root)
    return [] if snapshot is None else list(snapshot.jobs.values())


def check_all(world: World, ledgers: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    problems = check_runs(world)
    snapshot = read_manifest(world.root)
    if snapshot is None:
        paid = sum(len(charges) for charges in ledgers.values())
        return [*problems, f"{paid} charge(s) but no manifest"] if paid else problems
    problems += check_charges(world, snapshot, ledgers)
    problems += check_outputs(world.root, snapshot)
    problems += check_events(world, snapshot)
    problems += check_remote_ids(world, snapshot)
    return problems


def check_runs(world: World) -> list[str]:
    """A run that was not killed ends with 0 or 1 and never prints a traceback."""
    problems = []
    for window in world.runs[world.checked_runs :]:
        if window.killed:
            continue
        if window.returncode not in (0, 1) or "Traceback" in window.output:
            problems.append(f"{window.describe()} ended badly:\n{window.output[-3000:]}")
    world.checked_runs = len(world.runs)
    return problems


def check_charges(
    world: World, snapshot: Snapshot, ledgers: Mapping[str, list[dict[str, Any]]]
) -> list[str]:
    """At most one paid task per job, plus one per reset the user asked to pay for."""
    by_prompt = {
        (job["provider"], json.loads(job["params"]).get("prompt")): job_id
        for job_id, job in snapshot.jobs.items()
    }
    problems = []
    paid: Counter[str] = Counter()
    for provider, charges in ledgers.items():
        for charge in charges:
            prompt = _prompt_in(charge["body"], world.prompts)
            job_id = by_prompt.get((provider, prompt))
            if job_id is None:
                problems.append(f"{provider} charged {charge['task_id']} for no job")
                continue
            paid[job_id] += 1
            if not _named(charge["task_id"], snapshot.jobs[job_id], snapshot.events.get(job_id)):
                problems.append(
                    f"{provider} task {charge['task_id']} of job {job_id} is named nowhere "
                    f"and the job was never unknown: {_path(snapshot.events.get(job_id, []))}"
                )
    for job_id, count in paid.items():
        allowed = 1 + paid_resets(snapshot.events.get(job_id, []))
        if count > allowed:
            job = snapshot.jobs[job_id]
            problems.append(
                f"job {job_id} ({job['provider']}, now {job['state']}) paid {count} times, "
                f"allowed {allowed}; transitions: {_path(snapshot.events.get(job_id, []))}"
            )
    return problems


def _named(
    task_id: str, job: Mapping[str, Any], events: Sequence[Mapping[str, Any]] | None
) -> bool:
    """A paid task is recorded as the job's remote id (now, or as one a reset forgot),
    or the job is or was ``unknown`` (killed mid-submit, or the answer was dropped)."""
    events = events or []
    if job["state"] == "submitting" or any(e["to_state"] == "unknown" for e in events):
        return True
    remote_ids = [job["remote_id"] or ""]
    remote_ids += [e["detail"] or "" for e in events if e["to_state"] == "pending"]
    return any(task_id in text for text in remote_ids)


def paid_resets(events: Sequence[dict[str, Any]]) -> int:
    """Resets after which a new submit is the user's explicit wish: ``unknown → pending``
    (``--resubmit-unknown``), and ``failed → pending`` of a task the provider itself
    reported failed (not a download failure or an unreadable status)."""
    count = 0
    failed_by_provider = False
    for event in events:
        edge = (event["from_state"], event["to_state"])
        if event["to_state"] == "failed":
            detail = event["detail"] or ""
            failed_by_provider = event["from_state"] in ("submitted", "running") and not (
                detail.startswith("status:")
            )
        if edge == ("unknown", "pending") or (edge == ("failed", "pending") and failed_by_provider):
            count += 1
    return count


def _prompt_in(body: Any, prompts: Sequence[str]) -> str | None:
    """The job's prompt wherever the API's request body carries it."""
    if isinstance(body, str):
        return body if body in prompts else None
    values = body.values() if isinstance(body, dict) else body if isinstance(body, list) else []
    for value in values:
        found = _prompt_in(value, prompts)
        if found is not None:
            return found
    return None


PNG_END = b"IEND\xaeB`\x82"


def check_outputs(root: Path, snapshot: Snapshot) -> list[str]:
    """``done`` ⇒ each output on disk with its recorded size and sha256, complete."""
    problems = []
    for job_id, job in snapshot.jobs.items():
        if job["state"] != "done":
            continue
        outputs = snapshot.outputs.get(job_id, [])
        if not outputs:
            problems.append(f"job {job_id} done without outputs")
        for output in outputs:
            problems += _output_problems(root, job_id, output)
    return problems


def _output_problems(root: Path, job_id: str, output: dict[str, Any]) -> list[str]:
    path = root / output["path"]
    where = f"job {job_id} output {output['idx']} ({output['path']})"
    if not path.is_file():
        return [f"{where}: done but missing"]
    data = path.read_bytes()
    problems = []
    if len(data) != output["size"]:
        problems.append(f"{where}: {len(data)} bytes, recorded {output['size']}")
    if hashlib.sha256(data).hexdigest() != output["sha256"]:
        problems.append(f"{where}: sha256 differs from the manifest's")
    if path.suffix == ".png" and not data.endswith(PNG_END):
        problems.append(f"{where}: a PNG cut short (no IEND): a partial body was promoted")
    if path.with_name(path.name + ".part").exists():
        problems.append(f"{where}: a .part beside a done output")
    return problems


def check_events(world: World, snapshot: Snapshot) -> list[str]:
    """Each job's transitions: allowed edges, chained from ``pending`` to its state, made
    during one of our runs, and each option-only reset in a run with that option."""
    problems = []
    for job_id, job in snapshot.jobs.items():
        state = "pending"
        for event in snapshot.events.get(job_id, []):
            edge = (event["from_state"], event["to_state"])
            where = f"job {job_id} event {event['id']} {edge[0]} → {edge[1]}"
            if edge[0] != state:
                problems.append(f"{where}: the job was {state}")
            if edge not in ALLOWED_EDGES:
                problems.append(f"{where}: not an allowed edge ({event['detail']})")
            run = next((w for w in world.runs if w.holds(event["at"])), None)
            flag = FLAG_EDGES.get(edge)
            if run is None:
                problems.append(f"{where}: made while none of the test's runs was running")
            elif flag is not None and not getattr(run, flag):
                problems.append(f"{where}: made by {run.describe()}, needs --{flag}")
            state = edge[1]
        if job["state"] != state:
            problems.append(f"job {job_id} is {job['state']}, its events end in {state}")
    return problems


HOLDS_REMOTE_ID = {"submitted", "running", "succeeded", "downloading", "done"}


def check_remote_ids(world: World, snapshot: Snapshot) -> list[str]:
    """A remote id once recorded stays, unless a reset to ``pending`` names it (and
    ``check_events`` holds that reset to its option)."""
    problems = []
    for job_id, job in snapshot.jobs.items():
        now = job["remote_id"]
        if job["state"] in HOLDS_REMOTE_ID and not now:
            problems.append(f"job {job_id} is {job['state']} without a remote id")
        was = world.remote_ids.get(job_id)
        if was and now != was:
            forgotten = any(
                e["to_state"] == "pending" and f"was remote_id {was}" in (e["detail"] or "")
                for e in snapshot.events.get(job_id, [])
            )
            if not forgotten:
                problems.append(
                    f"job {job_id} lost remote id {was} (now {now!r}, {job['state']}) "
                    f"without a reset; transitions: {_path(snapshot.events.get(job_id, []))}"
                )
        if now:
            world.remote_ids[job_id] = now
        elif was:
            del world.remote_ids[job_id]
    return problems


def _path(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return "none"
    return " → ".join([events[0]["from_state"], *(e["to_state"] for e in events)])
