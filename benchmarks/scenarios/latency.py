"""Scenario 5 — latency from emulated completion to the output renamed into place.

Tasks have no jitter, so a task completes exactly ``task_seconds`` after the emulator
created it (the ledger's ``at``, epoch seconds, same machine clock). The output is in
place when ``download`` returned: the sidecar's ``timings.downloaded_at`` is taken right
after the rename and the directory fsync. Sidecars are matched to charges by remote id.
"""

from __future__ import annotations

import json
import statistics

from benchmarks.common import Config, Row, emulator
from benchmarks.scenarios.requests_per_job import CASES, Case, available, cases_for, measured_run

NAME = "latency"
MODES = ("poll", "subscription", "webhook")


def run(config: Config) -> list[Row]:
    jobs = config.pick(100, 50, 4)
    task_seconds = config.pick(5.0, 3.0, 0.3)
    rows: list[Row] = []
    for case in cases_for(config):
        scenario = f"5 latency ({case.label}, {task_seconds:g} s tasks, {jobs} jobs)"
        missing = available(case.provider)
        if missing:
            rows.append(Row(scenario, "completion → output in place", "s", [], note=missing))
            continue
        try:
            rows += _measure(config, case, scenario, jobs, task_seconds)
        except Exception as exc:  # a new adapter may not run yet; say so, keep going
            rows.append(Row(scenario, "completion → output in place", "s", [],
                            note=f"run failed: {exc!s:.300}"))  # fmt: skip
    for mode in missing_modes() if config.size != "tiny" else ():
        rows.append(Row(f"5 latency ({mode})", "completion → output in place", "s", [],
                        note="no landed adapter offers this completion mode yet"))  # fmt: skip
    return rows


def _measure(
    config: Config, case: Case, scenario: str, jobs: int, task_seconds: float
) -> list[Row]:
    medians: list[float] = []
    p99s: list[float] = []
    with emulator(case.provider, task_seconds=task_seconds, task_jitter=0, render=False) as emu:
        for round_ in range(config.runs):
            config.log(f"  latency {case.label} run {round_ + 1}: {jobs} jobs")
            poll = config.pick(None, None, "{initial: 0.05s, max: 0.2s}")
            result = measured_run(config, emu, case, jobs=jobs, name="latency", poll=poll)
            completed = {c["task_id"]: c["at"] + task_seconds for c in result.ledger}
            lags = []
            for sidecar in result.out.rglob("*.json"):
                data = json.loads(sidecar.read_text())
                remote = str(data.get("remote_id"))
                task = remote if remote in completed else remote.rpartition("/")[2]  # APIXO
                if task in completed:
                    lags.append(data["timings"]["downloaded_at"] - completed[task])
            if not lags:
                raise RuntimeError("no sidecar matched a charge")
            medians.append(statistics.median(lags))
            p99s.append(_percentile(lags, 0.99))
    return [
        Row(scenario, "completion → output in place, median", "s", medians,
            note="default settings" + (" (poll timing: the API's documented advice)"
                                       if case.completion == "poll" else "")),
        Row(scenario, "completion → output in place, p99", "s", p99s),
    ]  # fmt: skip


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def missing_modes() -> list[str]:
    """Completion modes no landed adapter offers yet (reported as such)."""
    offered = {case.completion for case in CASES if available(case.provider) is None}
    return [mode for mode in MODES if mode not in offered]
