"""End to end over real HTTP on the emulator: prompt metadata from JSONL, CSV and inline
prompts reaches the manifest, its snapshot and every sidecar, and never the API."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def test_metadata_is_recorded_per_job_and_never_sent(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory(task_seconds=0.2)
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a red panda", "style": "anime", "row": "mx-row-1", '
        '"meta": {"id": 101, "source": "mx-src-a"}}\n'
        '{"prompt": "a glass teapot", "row": "mx-row-2"}\n',
        encoding="utf-8",
    )
    (tmp_path / "p.csv").write_text(
        "subject,mood,batch\nan old fisherman,golden hour,mx-batch-7\n", encoding="utf-8"
    )
    spec_path = write_spec(
        tmp_path,
        f"""
        name: meta
        output: {{root: {tmp_path / "out"}}}
        providers:
          pixellabs:
            base_url: {emulator.urls["pixellabs"]}
            api_key: ${{PIXELLABS_API_KEY}}
        prompts:
          - file: p.jsonl
            meta: [row]
          - file: p.csv
            text: "portrait of {{subject}}, {{mood}} lighting"
            meta: [batch, mood]
          - text: a lighthouse at dusk
            meta: {{category: mx-cat-places, id: 3}}
        seeds: [1]
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 2m
        """,
    )
    spec = load_checked_spec(spec_path, env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete, summary

    expected = {
        "a red panda": {"row": "mx-row-1", "id": 101, "source": "mx-src-a"},
        "a glass teapot": {"row": "mx-row-2"},
        "portrait of an old fisherman, golden hour lighting": {
            "batch": "mx-batch-7",
            "mood": "golden hour",
        },
        "a lighthouse at dusk": {"category": "mx-cat-places", "id": 3},
    }
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    assert {r.job.prompt: dict(r.job.meta) for r in records} == expected
    assert {r.state for r in records} == {JobState.DONE}
    for record in records:
        path = spec.output.root / record.outputs[0].path
        sidecar = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        assert sidecar["meta"] == expected[record.job.prompt]
        assert not set(sidecar["params"]) & set(sidecar["meta"])

    snapshot = [
        json.loads(line)
        for line in (spec.output.root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {line["params"]["prompt"]: line["meta"] for line in snapshot} == expected

    bodies = [charge["body"] for charge in emulator.ledger("pixellabs")]
    assert len(bodies) == 4
    sent = json.dumps(bodies)
    assert "mx-" not in sent  # no metadata value reached the API
    for body in bodies:
        assert not {"meta", "row", "id", "source", "batch", "mood", "category"} & set(body)
    assert any(body.get("style") == "anime" for body in bodies)  # a parameter still is sent
