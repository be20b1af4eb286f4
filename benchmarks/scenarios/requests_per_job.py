"""Scenario 4 — HTTP requests per completed job, per provider, with default settings.

Each provider case runs ``pipeline run`` (default poll settings) against its emulator
with long tasks, then reads the emulator's request counters (``/_emulator/stats``).
A case whose adapter or emulator has not landed yet is reported as such; add a case
to ``CASES`` when an adapter lands.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Config,
    Emulator,
    Proc,
    Row,
    emulator,
    run_measured,
    runner_cmd,
    write_spec,
)

NAME = "requests"
DONE = re.compile(r"done (\d+)/(\d+)")


def _is_download(route: str) -> bool:
    return "/files/" in route or "/arweave/" in route or "/media/" in route


@dataclass(frozen=True)
class Case:
    """One provider and completion mode, with what counts as a status request there."""

    provider: str
    completion: str
    is_submit: Callable[[str], bool]
    is_status: Callable[[str], bool]
    target: float | None
    target_text: str
    extra: str = ""  # more YAML lines of the provider entry (4-space indent)
    concurrency: int = 50

    @property
    def label(self) -> str:
        return f"{self.provider} ({self.completion})"


CASES = [
    Case("pixellabs", "poll", lambda r: r == "POST /v1/generate",
         lambda r: r == "GET /v1/generate/{id}", 6.0, "≤ 6 polls/job"),
    Case("pixai", "subscription", lambda r: "createGenerationTask" in r,
         lambda r: r.startswith("graphql ") and "task" in r.lower() and "create" not in r.lower(),
         0.0, "0 status polls while the socket is up"),
    Case("acedata", "batch", lambda r: r.startswith("POST /pixverse/videos"),
         lambda r: r.startswith("POST /pixverse/tasks"), 0.2,
         "≤ 0.2 status requests/job at 50 in flight"),
    Case("apixo", "poll", lambda r: "generateTask" in r, lambda r: "statusTask" in r, 6.0,
         "≤ 6 polls/job", extra="    params: {model: nano-banana}\n"),
    Case("apixo", "webhook", lambda r: "generateTask" in r, lambda r: "statusTask" in r, None,
         "", extra="    params: {model: nano-banana}\n"),
]  # fmt: skip


def cases_for(config: Config) -> list[Case]:
    """Every case (or those of ``--provider``); the smoke test keeps to the first."""
    if config.size == "tiny":
        return CASES[:1]
    wanted = config.options.get("providers")
    return [case for case in CASES if not wanted or case.provider in wanted]


def available(provider: str) -> str | None:
    """Why ``provider`` cannot be measured yet, or None when it can."""
    from pipeline.emulators.registry import EMULATORS
    from pipeline.providers import registry

    if provider not in registry.available():
        return "adapter not landed yet"
    if provider not in EMULATORS:
        return "emulator not landed yet"
    return None


@dataclass
class MeasuredRun:
    proc: Proc
    stats: dict[str, Any]
    ledger: list[dict[str, Any]]
    out: Path
    done: int
    jobs: int


def measured_run(
    config: Config,
    emu: Emulator,
    case: Case,
    *,
    jobs: int,
    name: str,
    poll: str | None = None,
) -> MeasuredRun:
    """``pipeline run`` of ``jobs`` jobs with the case's completion mode; counters after."""
    prompts = min(jobs, 10)
    seeds = max(1, jobs // prompts)
    work = config.scratch(f"{name}-{case.provider}-{case.completion}")
    out = work / "out"
    extra = f"    options: {{completion: {case.completion}}}\n{case.extra}"
    spec = write_spec(
        work, url=emu.url, prompts=prompts, seeds=seeds, concurrency=case.concurrency,
        out=out, provider=case.provider, extra_provider=extra, poll=poll,
    )  # fmt: skip
    emu.reset()
    proc = run_measured(runner_cmd("run", str(spec), "--quiet"), cwd=work)
    match = DONE.search(proc.stdout)
    done = int(match.group(1)) if match else 0
    if done == 0:
        said = " | ".join(line.strip() for line in (proc.stdout + proc.stderr).splitlines()[-4:])
        raise RuntimeError(f"no job done (exit {proc.rc}): {said}")
    return MeasuredRun(
        proc, emu.admin("stats"), emu.admin("ledger")["charges"], out, done, prompts * seeds
    )


def run(config: Config) -> list[Row]:
    jobs = config.pick(100, 50, 4)
    task_seconds = config.pick(30.0, 10.0, 0.5)
    poll = config.pick(None, None, "{initial: 0.05s, max: 0.2s}")  # tiny: smoke test speed
    rows: list[Row] = []
    for case in cases_for(config):
        scenario = f"4 requests/job ({case.label}, {task_seconds:g} s tasks)"
        missing = available(case.provider)
        if missing:
            rows.append(Row(scenario, "status requests per job", "req/job", [],
                            target=case.target_text, note=missing))  # fmt: skip
            continue
        per_job: list[float] = []
        totals: list[float] = []
        try:
            with emulator(case.provider, task_seconds=task_seconds) as emu:
                for round_ in range(config.runs):
                    config.log(f"  requests {case.label} run {round_ + 1}: {jobs} jobs")
                    result = measured_run(config, emu, case, jobs=jobs, name="requests", poll=poll)
                    status, total = _counts(case, result)
                    per_job.append(status / max(result.done, 1))
                    totals.append(total / max(result.done, 1))
        except Exception as exc:  # a new adapter may not run yet; say so, keep going
            rows.append(Row(scenario, "status requests per job", "req/job", [],
                            target=case.target_text, note=f"run failed: {exc!s:.300}"))  # fmt: skip
            continue
        worst = max(per_job)
        rows += [
            Row(scenario, "status requests per completed job", "req/job", per_job,
                target=case.target_text,
                passed=None if case.target is None else worst <= case.target),
            Row(scenario, "all API requests per completed job (submit + status + downloads)",
                "req/job", totals),
        ]  # fmt: skip
    return rows


def _counts(case: Case, result: MeasuredRun) -> tuple[int, int]:
    requests: dict[str, int] = result.stats["requests"]
    status = sum(n for route, n in requests.items() if case.is_status(route))
    return status, sum(requests.values())
