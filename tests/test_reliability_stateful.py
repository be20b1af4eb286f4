"""A stateful property test of the reliability promises (issue 10), over real processes.

Hypothesis drives a ``RuleBasedStateMachine`` whose rules are what an unlucky user and a
misbehaving provider do: change the emulators' fault knobs, run to completion, SIGKILL
a ``pipeline run`` at a drawn moment, rerun with ``--retry-failed`` or
``--resubmit-unknown``, and let time pass. One ``pipeline emulate`` process (PixelLabs,
polled; APIXO, with webhook callbacks) lives for the whole test, so its charge ledger
survives every runner crash; it is reset between examples.

After every step the invariants are checked against the emulators' ledgers, the files on
disk and the manifest's ``events`` table (see ``tests/stateful_checks.py``):

- at most one paid task per job, plus one per ``unknown → pending`` reset (only
  ``--resubmit-unknown`` makes those) and one per ``--retry-failed`` of a task that
  itself failed;
- ``done`` ⇒ every output exists with its recorded size and sha256, complete, no
  ``.part`` beside it;
- every transition is an edge of ``ALLOWED_EDGES``, chained from ``pending`` to the
  job's current state, made during one of our runs, and each reset only under the
  option that allows it;
- a remote id is never lost or replaced, except by a reset to ``pending`` that an
  option asked for.

In ``make test``: 6 derandomized examples of up to 10 steps, plus fixed sequences of the
same rules for kill points random delays rarely hit. ``PIPELINE_STATEFUL=soak`` (with
``PIPELINE_STATEFUL_EXAMPLES=N``) runs longer examples on all four providers, with
shrinking: minutes to hours. The minimal examples that found defects 1, 7 and 10 of
issue 10 (seen failing before their fixes) are plain tests at the end of this file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .conftest import FAKE_KEY, EmulatorProcess, start_emulators
from .stateful_checks import RunWindow, Violation, World, check_all, jobs_in, jobs_of

pytestmark = pytest.mark.slow

SOAK = os.environ.get("PIPELINE_STATEFUL") == "soak"
PROVIDERS = ("pixellabs", "apixo", "pixai", "acedata") if SOAK else ("pixellabs", "apixo")
PROMPTS = ("prop job one", "prop job two", "prop job three")

BASE_KNOBS: dict[str, Any] = {
    "task_seconds": 0.6,
    "task_jitter": 0.3,
    "failure_rate": 0.0,
    "rate_limit_rate": 0.0,
    "retry_after": None,
    "error_rate": 0.0,
    "drop_after_create_rate": 0.0,
    "truncate_rate": 0.0,
    "url_ttl": None,
    "callback_delay": 0.0,
    "callback_loss_rate": 0.0,
    "callback_duplicate_rate": 0.0,
    "callback_retry_delays": [0.5, 1.0],
    "callback_timeout": 2.0,
    "event_loss_rate": 0.0,
    "output_bytes": None,
}
"""Every knob a rule may change, at its calm value (reset between examples)."""

FAULTS: list[tuple[str, Any]] = [
    ("drop_after_create_rate", 0.5),  # the task is created and charged, the answer lost
    ("drop_after_create_rate", 1.0),
    ("error_rate", 0.3),  # 500/503 on any API request, submits and status queries
    ("rate_limit_rate", 0.3),  # 429
    ("truncate_rate", 0.5),  # downloads cut short of their Content-Length
    ("truncate_rate", 1.0),
    ("task_seconds", 2.5),  # long tasks: crashes land mid-flight
    ("callback_duplicate_rate", 1.0),  # every callback twice
    ("callback_delay", 1.5),  # late callbacks, out of order with status answers
    ("callback_loss_rate", 0.5),
    ("output_bytes", 2_000_000),  # big files: crashes land mid-download, on a .part
]
FAULTS.append(("url_ttl", 0.3))  # result URLs that expire fast
if SOAK:
    FAULTS += [("failure_rate", 0.3), ("event_loss_rate", 0.5), ("retry_after", 1.0)]

DEADLINE = 60.0
"""run.deadline in seconds; the ``shorten_deadline`` rule shortens it."""
SHORT_DEADLINE = 2.0
RUN_TIMEOUT = 90.0
COVERAGE: Counter[str] = Counter()
"""Steps after which a job was in each state, runs killed… over the whole test."""


def spec_text(root: Path, urls: dict[str, str], deadline: float) -> str:
    blocks = {
        "pixellabs": "",
        "apixo": (
            "    params: {model: nano-banana}\n"
            "    options: {completion: webhook, callback_timeout: 2s, safety_poll: 1s}\n"
        ),
        "pixai": "",
        "acedata": "    params: {duration: 5, quality: 360p}\n",
    }
    providers = "".join(
        f"  {name}:\n    base_url: {urls[name]}\n    api_key: ${{STATEFUL_KEY}}\n"
        f"    concurrency: 2\n{blocks[name]}"
        for name in PROVIDERS
    )
    prompts = ", ".join(f'"{p}"' for p in PROMPTS)
    return (
        f"name: stateful\noutput:\n  root: {root}\nproviders:\n{providers}"
        f"prompts: [{prompts}]\nseeds: [1]\n"
        f"run:\n  poll: {{initial: 0.1s, max: 0.3s}}\n  deadline: {deadline:g}s\n"
        "  http_timeout: 10s\n  retries: 2\n"
    )


class ReliabilityMachine(RuleBasedStateMachine):
    """One output folder, one emulator process, a sequence of runs, crashes and faults."""

    emulator: EmulatorProcess
    workdir: Path

    def __init__(self) -> None:
        super().__init__()
        self.example = self.workdir / f"example-{time.monotonic_ns()}"
        self.example.mkdir()
        self.world = World(root=self.example / "out", providers=PROVIDERS, prompts=PROMPTS)
        self.deadline = DEADLINE
        self.env = {**os.environ, "STATEFUL_KEY": FAKE_KEY}

    # -- set-up ---------------------------------------------------------------------

    @initialize()
    def calm_emulators(self) -> None:
        for name in PROVIDERS:
            self._post(name, "reset", {})
            self._post(name, "config", BASE_KNOBS)
        self._write_spec()

    def _post(self, name: str, what: str, body: dict[str, Any]) -> None:
        url = f"{self.emulator.urls[name]}/_emulator/{what}"
        httpx.post(url, json=body, timeout=10).raise_for_status()

    def _write_spec(self) -> None:
        text = spec_text(self.world.root, self.emulator.urls, self.deadline)
        self.spec = self.example / "spec.yaml"
        self.spec.write_text(text, encoding="utf-8")

    # -- rules ------------------------------------------------------------------------

    @rule(provider=st.sampled_from(PROVIDERS), fault=st.sampled_from(FAULTS))
    def set_fault(self, provider: str, fault: tuple[str, Any]) -> None:
        name, value = fault
        self._post(provider, "config", {name: value})

    @rule()
    def calm_down(self) -> None:
        for name in PROVIDERS:
            self._post(name, "config", BASE_KNOBS)

    @rule()
    def run_to_completion(self) -> None:
        self._run()

    @rule()
    def rerun_retry_failed(self) -> None:
        self._run(retry_failed=True)

    @rule()
    def rerun_resubmit_unknown(self) -> None:
        self._run(resubmit_unknown=True)

    @rule()
    def calm_run_finishes_every_job(self) -> None:
        """With the faults gone, one run with both options takes every job to ``done``:
        no job is stuck in a state a rerun cannot move forward."""
        self.calm_down()
        self._run(retry_failed=True, resubmit_unknown=True)
        states = {job["state"] for job in jobs_of(self.world.root)}
        if states - {"done"}:
            raise Violation(f"a calm run left jobs {sorted(states)}:\n{self.world.runs[-1].output}")

    @rule(delay=st.floats(0.0, 3.0), retry_failed=st.booleans(), resubmit=st.booleans())
    def crash(self, delay: float, retry_failed: bool, resubmit: bool) -> None:
        """SIGKILL a run after ``delay`` seconds (before it starts, mid-submit, mid-poll,
        mid-download or after it ended: wherever the delay lands)."""
        started = time.monotonic()
        self._crash(
            RunWindow(retry_failed=retry_failed, resubmit_unknown=resubmit),
            lambda: time.monotonic() - started >= delay,
        )

    @rule(state=st.sampled_from(["submitting", "submitted", "running", "downloading"]))
    def crash_in_flight(self, state: str) -> None:
        """SIGKILL a run the moment the manifest shows a job in ``state`` (a forced kill
        point: random delays mostly land before the first submit or after the last file)."""
        self._crash(RunWindow(), lambda: jobs_in(self.world.root, state) > 0)

    def _crash(self, window: RunWindow, now: Callable[[], bool]) -> None:
        """Start a run and SIGKILL it once ``now()`` says so, unless it ended before."""
        process = subprocess.Popen(
            self._argv(window), cwd=self.example, env=self.env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        give_up = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None and not now() and time.monotonic() < give_up:
            time.sleep(0.005)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            window.killed = True
        _out, err = process.communicate(timeout=RUN_TIMEOUT)
        window.close(process.returncode, err)
        self.world.record(window)
        COVERAGE["runs killed" if window.killed else "crash rules that found the run over"] += 1

    @rule(seconds=st.floats(0.1, 3.0))
    def advance_time(self, seconds: float) -> None:
        """Tasks finish, URLs expire and callbacks fall on a dead receiver meanwhile."""
        time.sleep(seconds)

    @precondition(lambda self: self.deadline == DEADLINE)
    @rule()
    def shorten_deadline(self) -> None:
        """From now on runs give each job SHORT_DEADLINE seconds; with a crash and
        ``advance_time`` that leaves paid tasks behind their deadline on resume."""
        self.deadline = SHORT_DEADLINE
        self._write_spec()

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        self.check()

    @invariant()
    def note_coverage(self) -> None:
        """What the examples reached, printed at the end (``pytest -s``)."""
        jobs = jobs_of(self.world.root)
        COVERAGE.update(f"job {job['state']}" for job in jobs)
        if sum(len(self.emulator.ledger(name)) for name in PROVIDERS) > len(jobs):
            COVERAGE["more charges than jobs"] += 1

    def check(self) -> None:
        """Raise ``Violation`` listing every broken promise."""
        ledgers = {name: self.emulator.ledger(name) for name in PROVIDERS}
        problems = check_all(self.world, ledgers)
        if problems:
            raise Violation("\n".join(problems))

    # -- helpers ----------------------------------------------------------------------

    def _argv(self, window: RunWindow) -> list[str]:
        argv = [sys.executable, "-m", "pipeline", "run", str(self.spec), "--quiet"]
        if window.retry_failed:
            argv.append("--retry-failed")
        if window.resubmit_unknown:
            argv.append("--resubmit-unknown")
        return argv

    def _run(self, *, retry_failed: bool = False, resubmit_unknown: bool = False) -> None:
        window = RunWindow(retry_failed=retry_failed, resubmit_unknown=resubmit_unknown)
        try:
            done = subprocess.run(
                self._argv(window), cwd=self.example, env=self.env, text=True,
                capture_output=True, timeout=RUN_TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:  # killed and reaped by subprocess.run
            window.killed = True
            window.close(-9, str(exc.stdout or "") + str(exc.stderr or ""))
            self.world.record(window)
            raise Violation(f"a run did not end within {RUN_TIMEOUT:g} s") from None
        window.close(done.returncode, done.stdout + done.stderr)
        self.world.record(window)


def hypothesis_settings() -> settings:
    if SOAK:
        return settings(
            max_examples=int(os.environ.get("PIPELINE_STATEFUL_EXAMPLES", "50")),
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=6,
        stateful_step_count=10,
        deadline=None,
        derandomize=True,  # the same rule sequences on every CI run
        database=None,
        phases=(Phase.explicit, Phase.generate),  # a shrink of real runs takes minutes
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


@pytest.fixture(scope="module")
def emulator() -> Any:
    knobs = {key: value for key, value in BASE_KNOBS.items() if value is not None}
    process = start_emulators(list(PROVIDERS), knobs)
    yield process
    os.killpg(process.process.pid, signal.SIGTERM)
    try:
        process.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.process.pid, signal.SIGKILL)
        process.process.wait()


def machine_for(emulator: EmulatorProcess, workdir: Path) -> type[ReliabilityMachine]:
    class Machine(ReliabilityMachine):
        pass

    Machine.emulator = emulator
    Machine.workdir = workdir
    return Machine


def test_reliability_promises_hold_under_faults_and_crashes(emulator, tmp_path):
    COVERAGE.clear()
    run_state_machine_as_test(machine_for(emulator, tmp_path), settings=hypothesis_settings())
    print("\ncoverage:", ", ".join(f"{k} {n}" for k, n in sorted(COVERAGE.items())))


def fixed_machine(emulator: EmulatorProcess, workdir: Path) -> ReliabilityMachine:
    """A machine for a fixed sequence of rules (a known minimal failing example)."""
    machine = machine_for(emulator, workdir)()
    machine.calm_emulators()
    machine.check()
    return machine


def run_steps(machine: ReliabilityMachine, *steps: Callable[[], None]) -> None:
    for step in steps:
        step()
        machine.check()


def test_kills_mid_download_and_late_duplicate_callbacks(emulator, tmp_path):
    """Fixed kill points the random examples may miss, each followed by the checks."""
    machine = fixed_machine(emulator, tmp_path)
    for name in PROVIDERS:
        machine.set_fault(name, ("output_bytes", 2_000_000))
    machine.set_fault("pixellabs", ("truncate_rate", 0.5))
    machine.set_fault("apixo", ("callback_duplicate_rate", 1.0))
    machine.set_fault("apixo", ("callback_delay", 1.5))
    run_steps(
        machine,
        lambda: machine.crash_in_flight("downloading"),
        lambda: machine.crash_in_flight("submitting"),
        lambda: machine.crash_in_flight("running"),
        machine.run_to_completion,
        machine.calm_run_finishes_every_job,
    )


def test_dropped_answers_are_paid_again_only_on_request(emulator, tmp_path):
    """Every submit answer lost after the task was created: the jobs are ``unknown`` and
    stay so (no new charge) until ``--resubmit-unknown``, which may pay once more."""
    machine = fixed_machine(emulator, tmp_path)
    machine.set_fault("pixellabs", ("drop_after_create_rate", 1.0))
    machine.set_fault("apixo", ("error_rate", 0.3))
    run_steps(
        machine,
        machine.run_to_completion,
        machine.calm_down,
        machine.rerun_retry_failed,
        machine.rerun_resubmit_unknown,
    )
    assert {job["state"] for job in jobs_of(machine.world.root)} == {"done"}
    assert len(emulator.ledger("pixellabs")) == 2 * len(PROMPTS)


def test_resume_past_the_deadline_never_pays_twice(emulator, tmp_path):
    """Crash with paid tasks in flight, wait past run.deadline, rerun, then
    ``--retry-failed``: the tasks that finished meanwhile must not be paid again."""
    machine = fixed_machine(emulator, tmp_path)
    machine.shorten_deadline()
    machine.set_fault("pixellabs", ("task_seconds", 1.0))
    machine.set_fault("apixo", ("task_seconds", 1.0))
    run_steps(
        machine,
        lambda: machine.crash_in_flight("submitted"),
        lambda: machine.advance_time(SHORT_DEADLINE + 1.0),
        machine.run_to_completion,
        machine.rerun_retry_failed,
    )


def test_a_deadline_passing_during_downloads_leaves_no_job_stuck(emulator, tmp_path):
    """Every download cut short until the deadline has passed: the jobs pause in
    ``succeeded``; a calm rerun must take them to ``done``, not strand them."""
    machine = fixed_machine(emulator, tmp_path)
    machine.shorten_deadline()
    for name in PROVIDERS:
        machine.set_fault(name, ("truncate_rate", 1.0))
    run_steps(machine, machine.run_to_completion, machine.calm_run_finishes_every_job)


def test_a_download_failure_is_never_paid_for_again(emulator, tmp_path):
    """Result URLs that expire while truncated downloads are retried: the job fails on
    the 403; ``--retry-failed`` must fetch again from the recorded task, not pay anew."""
    machine = fixed_machine(emulator, tmp_path)
    machine.set_fault("apixo", ("truncate_rate", 1.0))
    machine.set_fault("apixo", ("url_ttl", 0.3))
    run_steps(machine, machine.run_to_completion, machine.calm_down, machine.rerun_retry_failed)
