"""One spec, four providers, one parameter matrix: everything completes over real HTTP
and WebSocket on loopback, and `pipeline plan` shows each provider's own request."""

from __future__ import annotations

import json

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import run_cli, write_spec

KEYS = {
    "PIXELLABS_KEY": "pl-fake",
    "PIXAI_KEY": "pa-fake",
    "APIXO_KEY": "ax-fake",
    "ACEDATA_KEY": "ad-fake",
}


def mixed_spec(tmp_path, urls):
    return write_spec(
        tmp_path,
        f"""
        name: mixed
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{urls["pixellabs"]}", api_key: "${{PIXELLABS_KEY}}"}}
          pixai: {{base_url: "{urls["pixai"]}", api_key: "${{PIXAI_KEY}}"}}
          apixo:
            base_url: "{urls["apixo"]}"
            api_key: "${{APIXO_KEY}}"
            params: {{model: nano-banana}}
            options: {{completion: webhook}}
          acedata:
            base_url: "{urls["acedata"]}"
            api_key: "${{ACEDATA_KEY}}"
            params: {{duration: 5}}
        prompts:
          - a paper boat on a puddle
          - text: "a {{animal}} in a hat"
            vars: {{animal: [frog, heron]}}
        matrix:
          aspect_ratio: ["1:1", "16:9"]
          include:
            - {{provider: acedata, quality: 360p}}
          exclude:
            - {{provider: pixai, aspect_ratio: "16:9"}}
        seeds: [3]
        run:
          poll: {{initial: 0.1s, max: 0.5s}}
    """,
    )


def test_four_providers_one_matrix(tmp_path, emulator_factory):
    emulator = emulator_factory(["pixellabs", "pixai", "apixo", "acedata"], task_seconds=0.4)
    path = mixed_spec(tmp_path, emulator.urls)

    plan = run_cli("plan", str(path), "--show", "1", cwd=tmp_path, env=KEYS)
    assert plan.returncode == 0, plan.stderr
    assert "mixed: 21 jobs" in plan.stdout  # 3 prompts x (2+1+2+2) cells
    for request in (
        "POST /v1/generate",
        "POST /graphql",
        "POST /api/v1/generateTask/nano-banana",
        "POST /pixverse/videos",
    ):
        assert request in plan.stdout, plan.stdout
    assert '"quality": "360p"' in plan.stdout
    assert emulator.ledger("pixellabs") == []  # plan sends nothing

    spec = load_checked_spec(path, env=KEYS)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete, summary.states
    assert {name: states for name, states in summary.states.items()} == {
        "pixellabs": {"done": 6},
        "pixai": {"done": 3},
        "apixo": {"done": 6},
        "acedata": {"done": 6},
    }
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    extensions = {r.job.provider: {o.path.rsplit(".", 1)[1] for o in r.outputs} for r in records}
    assert extensions == {
        "pixellabs": {"png"},
        "pixai": {"png"},
        "apixo": {"png"},
        "acedata": {"mp4"},
    }
    for name in KEYS.values():
        assert name not in (spec.output.root / "manifest.jsonl").read_text()
    for provider in ("pixellabs", "pixai", "apixo", "acedata"):
        ledger = emulator.ledger(provider)
        assert len(ledger) == summary.states[provider]["done"]
        assert emulator.admin(provider, "stats")["downloads_with_auth"] == 0


def test_rate_limit_headers_slow_the_runner_before_it_is_refused(tmp_path, emulator_factory):
    # 10 requests per 2-second window; the run needs about 50 requests
    emulator = emulator_factory(
        ["pixellabs"], task_seconds=0.2, requests_per_minute=10, rate_window=2
    )
    path = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{emulator.urls["pixellabs"]}", api_key: k, concurrency: 8}}
        prompts: [a, b, c, d, e, f, g, h]
        seeds: [1, 2]
        run:
          poll: {{initial: 0.1s, max: 0.5s}}
    """,
    )
    spec = load_checked_spec(path, env={})
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.DONE) == 16
    stats = emulator.admin("pixellabs", "stats")
    refused = json.dumps(stats)
    assert stats["faults"].get("limit_exceeded", 0) <= 2, refused  # the limiter's own 429s
    assert stats["requests_total"] > 30, refused  # the limit really was in play
