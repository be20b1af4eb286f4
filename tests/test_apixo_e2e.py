"""APIXO end to end over real HTTP on loopback: polling, webhooks, and what goes wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.commands import load_checked_spec, run_spec
from pipeline.errors import SpecError
from pipeline.manifest.store import Manifest
from pipeline.models import JobState, Spec

from .conftest import FAKE_KEY, EmulatorProcess, write_spec

APIXO_KEY = "apixo-test-key-0001"
ENV = {"APIXO_API_KEY": APIXO_KEY, "PIXELLABS_API_KEY": FAKE_KEY}
STATUS_ROUTE = "GET /api/v1/statusTask/{model}"
JOBS = 4  # two prompts x two models


def apixo_spec(tmp_path: Path, url: str, *, options: str = "{}", extra: str = "") -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: apixo-e2e
        output:
          root: {tmp_path / "out"}
        providers:
          apixo:
            base_url: {url}
            api_key: ${{APIXO_API_KEY}}
            concurrency: 4
            options: {options}
        prompts:
          - a lighthouse in a storm
          - a teapot made of glass
        matrix:
          model: [nano-banana, flux2]
          aspect_ratio: ["16:9"]
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 2m
        {extra}
        """,
    )


def records(spec: Spec) -> list[Any]:
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        return list(manifest.iter_records(with_outputs=True))


def status_polls(emulator: EmulatorProcess) -> int:
    requests: dict[str, int] = emulator.admin("apixo", "stats")["requests"]
    return requests.get(STATUS_ROUTE, 0)


def assert_all_done_with_verified_pngs(spec: Spec) -> None:
    found = records(spec)
    assert len(found) == JOBS
    for record in found:
        assert record.state is JobState.DONE
        assert record.remote_id.startswith(f"{record.job.model}/")
        (output,) = record.outputs
        data = (spec.output.root / output.path).read_bytes()
        assert len(data) == output.size
        assert hashlib.sha256(data).hexdigest() == output.sha256
        with Image.open(spec.output.root / output.path) as image:
            assert image.format == "PNG"


def test_polling_run_completes_and_rerun_submits_nothing(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo"], task_seconds=0.3)
    spec = load_checked_spec(apixo_spec(tmp_path, emulator.urls["apixo"]), env=ENV)

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    assert summary.submitted == JOBS
    assert_all_done_with_verified_pngs(spec)
    ledger = emulator.ledger("apixo")
    assert len(ledger) == JOBS
    assert {c["route"] for c in ledger} == {"POST /api/v1/generateTask/{model}"}
    assert all(c["body"]["request_type"] == "async" for c in ledger)
    assert all(c["body"]["input"]["mode"] == "text-to-image" for c in ledger)
    assert run_spec(spec, quiet=True, handle_signals=False).submitted == 0
    assert len(emulator.ledger("apixo")) == JOBS


def test_failures_carry_fail_code_and_message(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo"], task_seconds=0.2, failure_rate=1.0)
    spec = load_checked_spec(apixo_spec(tmp_path, emulator.urls["apixo"]), env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.FAILED) == JOBS
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        failures = manifest.failures()
    codes = {"CONTENT_VIOLATION", "GENERATION_FAILED", "PROCESSING_TIMEOUT"}
    for failure in failures:
        code, _, message = (failure.error or "").partition(": ")
        assert code in codes and message


def test_webhook_run_completes_with_only_confirmation_polls(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo"], task_seconds=0.3, callback_retry_delays=[0.2, 0.4, 0.8])
    spec_path = apixo_spec(tmp_path, emulator.urls["apixo"], options="{completion: webhook}")
    spec = load_checked_spec(spec_path, env=ENV)

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    assert_all_done_with_verified_pngs(spec)
    ledger = emulator.ledger("apixo")
    assert len(ledger) == JOBS
    for charge in ledger:
        assert charge["body"]["request_type"] == "callback"
        assert "/hooks/" in charge["body"]["callback_url"]
    assert emulator.admin("apixo", "callbacks")["counts"]["delivered"] == JOBS
    assert status_polls(emulator) == JOBS  # one confirmation each, no polling


def test_duplicate_and_late_callbacks_change_nothing(tmp_path, emulator_factory):
    emulator = emulator_factory(
        ["apixo"], task_seconds=0.2, callback_duplicate_rate=1.0, callback_delay=0.3
    )
    spec_path = apixo_spec(tmp_path, emulator.urls["apixo"], options="{completion: webhook}")
    spec = load_checked_spec(spec_path, env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete, summary
    assert len(emulator.ledger("apixo")) == JOBS
    assert status_polls(emulator) <= JOBS + 2  # a duplicate may race one confirmation
    assert_all_done_with_verified_pngs(spec)


def test_lost_callbacks_fall_back_to_polling(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo"], task_seconds=0.2, callback_loss_rate=1.0)
    options = "{completion: webhook, callback_timeout: 1s}"
    spec = load_checked_spec(apixo_spec(tmp_path, emulator.urls["apixo"], options=options), env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete, summary
    assert emulator.admin("apixo", "callbacks")["counts"]["lost"] == JOBS
    assert status_polls(emulator) >= JOBS


def test_account_error_stops_only_apixo(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo", "pixellabs"], task_seconds=0.2)
    spec_path = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          apixo:
            base_url: {emulator.urls["apixo"]}
            api_key: bad-key-for-tests
            params: {{model: nano-banana}}
          pixellabs:
            base_url: {emulator.urls["pixellabs"]}
            api_key: ${{PIXELLABS_API_KEY}}
        prompts: [a red fox, a blue bird]
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
        """,
    )
    spec = load_checked_spec(spec_path, env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert set(summary.stopped) == {"apixo"}
    assert "401" in summary.stopped["apixo"]
    assert summary.states["apixo"] == {"pending": 2}
    assert summary.states["pixellabs"] == {"done": 2}
    assert emulator.ledger("apixo") == []


def test_missing_model_is_a_spec_error_before_anything_is_sent(tmp_path, emulator_factory):
    emulator = emulator_factory(["apixo"], task_seconds=0.2)
    spec_path = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          apixo: {{base_url: {emulator.urls["apixo"]}, api_key: "${{APIXO_API_KEY}}"}}
        prompts: [a red fox]
        """,
    )
    with pytest.raises(SpecError, match="needs a model") as caught:
        load_checked_spec(spec_path, env=ENV)
    assert caught.value.path == "providers.apixo" and caught.value.line == 4
    assert not (tmp_path / "out").exists() and emulator.ledger("apixo") == []
