"""A finished, paid task whose result URL expired is fetched again from the provider,
never paid for again (issue 10, #7). Charges are counted on the emulator's ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands import load_checked_spec, run_spec, status_report
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}
JOBS = 4


def spec_file(tmp_path: Path, url: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: refetch
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{url}", api_key: "${{PIXELLABS_API_KEY}}", concurrency: 2}}
        prompts: [a tin robot, a glass owl]
        seeds: [1, 2]
        run:
          poll: {{initial: 0.05s, max: 0.1s}}
          retries: 3
    """,
    )


def status_queries(emulator) -> int:  # type: ignore[no-untyped-def]
    stats = emulator.admin("pixellabs", "stats")
    return sum(n for route, n in stats["requests"].items() if route.startswith("GET /v1/generate"))


def test_a_url_that_keeps_expiring_is_refreshed_until_one_works(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.05, stale_urls=2)
    spec = load_checked_spec(spec_file(tmp_path, emulator.urls["pixellabs"]), env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete, summary.states
    assert len(emulator.ledger("pixellabs")) == JOBS


def test_retry_failed_fetches_a_download_failure_again_without_a_new_submit(
    tmp_path, emulator_factory
):
    emulator = emulator_factory(task_seconds=0.05, stale_urls=1000)
    spec = load_checked_spec(spec_file(tmp_path, emulator.urls["pixellabs"]), env=ENV)
    first = run_spec(spec, quiet=True, handle_signals=False)
    assert first.count(JobState.FAILED) == JOBS, first.states
    # the refreshing is bounded: a few status queries per job, not an endless loop
    assert status_queries(emulator) <= JOBS * 12
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        failed = manifest.failures()
        report = status_report(manifest)
    assert all(r.remote_id and r.failure == "download" for r in failed), failed
    assert {f["failure"] for f in report["failures"]} == {"download"}

    emulator.configure("pixellabs", stale_urls=0)
    retried = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)
    assert retried.complete and retried.submitted == 0, retried.states
    assert len(emulator.ledger("pixellabs")) == JOBS


def test_retry_failed_still_resubmits_a_task_that_failed_remotely(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.05, failure_rate=1.0)
    spec = load_checked_spec(spec_file(tmp_path, emulator.urls["pixellabs"]), env=ENV)
    first = run_spec(spec, quiet=True, handle_signals=False)
    assert first.count(JobState.FAILED) == JOBS
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        assert {r.failure for r in manifest.failures()} == {"remote"}
    emulator.configure("pixellabs", failure_rate=0.0)
    retried = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)
    assert retried.complete and retried.submitted == JOBS
    assert len(emulator.ledger("pixellabs")) == 2 * JOBS


PROVIDER_ENTRIES = {
    "pixai": "pixai: {{base_url: '{url}', api_key: k, options: {{completion: poll}}}}",
    "apixo": "apixo: {{base_url: '{url}', api_key: k, params: {{model: nano-banana}}}}",
}


@pytest.mark.parametrize("provider", sorted(PROVIDER_ENTRIES))
def test_other_apis_refresh_an_expired_url_too(tmp_path, emulator_factory, provider):
    """PixAI through its media query, APIXO through statusTask."""
    emulator = emulator_factory([provider], task_seconds=0.05, stale_urls=2)
    entry = PROVIDER_ENTRIES[provider].format(url=emulator.urls[provider])
    path = write_spec(
        tmp_path,
        f"""
        name: refetch-{provider}
        output:
          root: {tmp_path / "out"}
        providers:
          {entry}
        prompts: [a tin robot, a glass owl]
        run:
          poll: {{initial: 0.05s, max: 0.1s}}
          retries: 3
    """,
    )
    spec = load_checked_spec(path)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        failures = [(r.failure, r.error) for r in manifest.failures()]
    assert summary.complete, failures
    assert len(emulator.ledger(provider)) == 2
