"""Hostile file hosts end to end: ``pipeline run`` against an emulator whose downloads
misbehave (knobs), over real HTTP on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobRecord, JobState, Spec

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _spec(tmp_path: Path, url: str, provider_extra: str = "", deadline: str = "2m") -> Spec:
    path = write_spec(
        tmp_path,
        f"""
        name: hostile
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
            {provider_extra}
        prompts:
          - a red fox in the snow
          - a glass teapot
        seeds: [1, 2, 3]
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: {deadline}
        """,
    )
    return load_checked_spec(path, env=ENV)


def _records(spec: Spec) -> list[JobRecord]:
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        return list(manifest.iter_records(with_outputs=True))


@contextmanager
def other_host() -> Iterator[tuple[str, list[str]]]:
    """Another loopback server (standing in for a private host) that records any hit."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b"\x89PNG\r\n\x1a\n" + b"secret" + IEND
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_redirected_to_another_host_fails_the_job_unfetched(tmp_path, emulator_factory):
    """The emulator's file host is trusted (the provider lives there); the host it
    redirects to is not: each job fails with the reason, and the other host sees nothing."""
    with other_host() as (target, hits):
        emulator = emulator_factory(task_seconds=0.2, redirect_downloads_to=target)
        spec = _spec(tmp_path, emulator.urls["pixellabs"])
        run_spec(spec, quiet=True, handle_signals=False)
    records = _records(spec)
    assert len(records) == 6
    for record in records:
        assert record.state is JobState.FAILED, record
        assert record.error is not None and "refused" in record.error
    assert hits == []
    assert not [p for p in spec.output.root.rglob("*") if p.suffix in (".png", ".part")]


def test_an_endless_download_stops_at_the_spec_cap(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2, endless_downloads=True)
    spec = _spec(tmp_path, emulator.urls["pixellabs"], "limits: {max_download_bytes: 1048576}")
    run_spec(spec, quiet=True, handle_signals=False)
    records = _records(spec)
    assert len(records) == 6
    for record in records:
        assert record.state is JobState.FAILED, record
        assert record.error is not None and "download cap of 1048576 bytes" in record.error
    assert not [p for p in spec.output.root.rglob("*") if ".part" in p.name]


def test_a_huge_status_answer_is_abandoned_at_the_cap(tmp_path, emulator_factory):
    """Status answers of 4 MiB against a 1 MiB cap: never read whole, never `done`, and the
    run ends by its deadline with the jobs in states a rerun moves forward."""
    emulator = emulator_factory(task_seconds=0.2, status_pad_bytes=4 << 20)
    spec = _spec(
        tmp_path,
        emulator.urls["pixellabs"],
        "limits: {max_response_bytes: 1048576}",
        deadline="3s",
    )
    run_spec(spec, quiet=True, handle_signals=False)
    records = _records(spec)
    assert len(records) == 6
    assert {r.state for r in records} <= {JobState.TIMED_OUT, JobState.SUBMITTED}
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        details = " ".join(
            str(event.detail) for r in records for event in manifest.events(r.job.id)
        )
    assert "max_response_bytes" in details


def _assert_whole_files_as_served(spec: Spec, records: list[JobRecord]) -> None:
    for record in records:
        assert record.state is JobState.DONE, record
        output = record.outputs[0]
        data = (spec.output.root / output.path).read_bytes()
        assert data.endswith(IEND) and hashlib.sha256(data).hexdigest() == output.sha256
        assert httpx.get(output.url or "", timeout=10).content == data  # as served now
        with Image.open(spec.output.root / output.path) as image:
            image.verify()


def test_bodies_without_length_or_with_a_lying_one_are_never_promoted_cut(
    tmp_path, emulator_factory
):
    emulator = emulator_factory(
        task_seconds=0.2, unframed_rate=0.5, truncate_rate=0.4, short_length_rate=0.3, seed=7
    )
    spec = _spec(tmp_path, emulator.urls["pixellabs"])
    for _ in range(3):  # a job whose downloads kept failing is paused, then resumed
        run_spec(spec, quiet=True, handle_signals=False)
    stats = emulator.admin("pixellabs", "stats")
    assert stats["faults"].get("truncated") and stats["faults"].get("unframed")
    assert stats["faults"].get("short_length")
    emulator.configure("pixellabs", unframed_rate=0, truncate_rate=0, short_length_rate=0)
    _assert_whole_files_as_served(spec, _records(spec))


def test_a_file_changed_between_attempts_is_fetched_whole_not_spliced(tmp_path, emulator_factory):
    """Cut at half (past the 1 MiB held in memory, so a .part is kept), then the file is
    replaced: the resume carries If-Range, the host answers with the whole new file."""
    emulator = emulator_factory(
        task_seconds=0.2, truncate_rate=0.5, change_after_truncate=True, output_bytes=3_000_000
    )
    spec = _spec(tmp_path, emulator.urls["pixellabs"])
    for _ in range(3):
        run_spec(spec, quiet=True, handle_signals=False)
    assert emulator.admin("pixellabs", "stats")["faults"].get("truncated")
    emulator.configure("pixellabs", truncate_rate=0)
    _assert_whole_files_as_served(spec, _records(spec))
