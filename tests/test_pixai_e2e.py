"""PixAI end to end: spec → scheduler → emulator (a separate process) over real HTTP and
a real WebSocket on loopback → verified files."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobRecord, JobState, Spec

from .conftest import EmulatorProcess, write_spec

KEY = "pixai-e2e-key"


def pixai_spec(
    tmp_path: Path,
    url: str,
    *,
    completion: str = "subscription",
    options: str = "",
    seeds: str = "[1, 2, 3]",
    counts: str = "[1]",
) -> Spec:
    path = write_spec(
        tmp_path,
        f"""
        name: pixai-e2e
        output:
          root: {tmp_path / "out"}
        providers:
          pixai:
            base_url: {url}
            api_key: {KEY}
            concurrency: 10
            options: {{completion: {completion}{options}}}
        prompts:
          - a red fox in the snow
          - a glass teapot
        matrix:
          count: {counts}
        seeds: {seeds}
        run:
          poll: {{initial: 0.05s, max: 0.5s}}
          deadline: 2m
        """,
    )
    return load_checked_spec(path)


def records(spec: Spec) -> list[JobRecord]:
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        return list(manifest.iter_records(with_outputs=True))


def requests(emulator: EmulatorProcess) -> Counter[str]:
    return Counter(emulator.admin("pixai", "stats")["requests"])


def assert_all_done_once(spec: Spec, emulator: EmulatorProcess, jobs: int) -> list[JobRecord]:
    done = records(spec)
    assert len(done) == jobs
    assert {r.state for r in done} == {JobState.DONE}, [(r.state, r.error) for r in done]
    charges = emulator.ledger("pixai")
    assert len(charges) == jobs
    assert len({c["task_id"] for c in charges}) == jobs
    for record in done:
        for output in record.outputs:
            data = (spec.output.root / output.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output.sha256
    return done


def grid_url(emulator: EmulatorProcess, task_id: str) -> str:
    """The PUBLIC URL of a batch task's top-level (grid) media, asked of the emulator."""
    url = emulator.urls["pixai"] + "/graphql"
    headers = {"Authorization": f"Bearer {KEY}"}
    query = "query($id: ID!) { task(id: $id) { outputs } }"
    task = httpx.post(url, json={"query": query, "variables": {"id": task_id}}, headers=headers)
    media_id = task.json()["data"]["task"]["outputs"]["mediaId"]
    query = "query($id: String!) { media(id: $id) { urls { variant url } } }"
    media = httpx.post(url, json={"query": query, "variables": {"id": media_id}}, headers=headers)
    urls = media.json()["data"]["media"]["urls"]
    return str(next(u["url"] for u in urls if u["variant"] == "PUBLIC"))


def test_subscription_run_needs_no_status_polls_and_batches_give_four_files(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixai"], task_seconds=0.4)
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], counts="[1, 4]")

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    done = assert_all_done_once(spec, emulator, 12)
    by_count = Counter(len(r.outputs) for r in done)
    assert by_count == {1: 6, 4: 6}
    for record in done:
        if record.job.params["count"] == 4:
            assert record.remote_id is not None
            grid = grid_url(emulator, record.remote_id)
            assert grid not in {o.url for o in record.outputs}
            assert len({o.sha256 for o in record.outputs}) == 4
            with Image.open(spec.output.root / record.outputs[0].path) as image:
                assert image.format == "PNG"
    counted = requests(emulator)
    assert counted["graphql getTaskById"] == 0  # the socket was up: no status polls
    assert counted["ws subscribePersonalEvents"] == 1  # one socket for the whole run
    assert emulator.admin("pixai", "ws")["foreign_events"] > 0  # other tasks' events: ignored
    assert emulator.admin("pixai", "stats")["downloads_with_auth"] == 0

    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.submitted == 0 and again.already_done == 12


def test_failures_carry_the_provider_reason(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["pixai"], task_seconds=0.2, failure_rate=1.0)
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], seeds="[1]")

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert not summary.complete
    failed = records(spec)
    assert {r.state for r in failed} == {JobState.FAILED}
    reasons = {"NSFW_CONTENT", "GENERATION_FAILED", "TIMEOUT"}
    assert all(r.error and r.error.split(":")[0] in reasons for r in failed), failed


def test_socket_drop_mid_run_every_job_still_completes(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixai"], task_seconds=1.0)
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], seeds="[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")
    drop_url = emulator.urls["pixai"] + "/_emulator/ws/drop"
    dropper = threading.Timer(
        0.8, lambda: httpx.post(drop_url, json={"down_seconds": 2.0}, timeout=10)
    )

    dropper.start()
    try:
        summary = run_spec(spec, quiet=True, handle_signals=False)
    finally:
        dropper.cancel()

    assert summary.complete, summary
    assert_all_done_once(spec, emulator, 20)
    counted = requests(emulator)
    assert counted["ws subscribePersonalEvents"] >= 2  # it reconnected
    assert counted["graphql getTaskById"] > 0  # polled or reconciled across the gap


def test_lost_events_are_caught_by_the_safety_poll(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["pixai"], task_seconds=0.3)
    httpx.post(
        emulator.urls["pixai"] + "/_emulator/ws/config", json={"event_loss_rate": 1.0}, timeout=10
    ).raise_for_status()
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], options=", ws_safety_poll: 1", seeds="[1]")

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    assert_all_done_once(spec, emulator, 2)
    assert requests(emulator)["graphql getTaskById"] >= 2


def test_poll_mode_completes_too(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["pixai"], task_seconds=0.2)
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], completion="poll", counts="[2]")

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    done = assert_all_done_once(spec, emulator, 6)
    assert all(len(r.outputs) == 2 for r in done)
    counted = requests(emulator)
    assert counted["graphql getTaskById"] >= 6
    assert counted["ws subscribePersonalEvents"] == 0


def test_a_job_past_its_deadline_is_cancelled_at_pixai(tmp_path, emulator_factory):
    emulator = emulator_factory(["pixai"], task_seconds=60)
    spec = pixai_spec(tmp_path, emulator.urls["pixai"], seeds="[1]")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(spec_path.read_text().replace("deadline: 2m", "deadline: 1s"))
    spec = load_checked_spec(spec_path)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.TIMED_OUT) == 2
    for record in records(spec):
        assert record.error and "remote task cancelled" in record.error
        answer = httpx.post(
            f"{emulator.urls['pixai']}/graphql",
            json={
                "query": "query($id: ID!) { task(id: $id) { status } }",
                "variables": {"id": record.remote_id},
            },
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ).json()
        assert answer["data"]["task"]["status"] == "cancelled"
