"""Every spec we ship loads, validates its parameters, and plans without sending."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands import load_checked_spec, plan_text
from pipeline.matrix import count_jobs

FAKE_KEYS = {
    name: "fake-key"
    for name in ("PIXELLABS_API_KEY", "PIXAI_API_KEY", "APIXO_API_KEY", "ACEDATA_API_KEY")
}
SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_is_valid_and_plans(path: Path) -> None:
    spec = load_checked_spec(path, env=FAKE_KEYS)
    assert count_jobs(spec) > 0
    lines = list(plan_text(spec, show=1))
    assert lines[0].startswith(f"{spec.name}: ")
    assert any("request: POST" in line for line in lines)
    assert "fake-key" not in "\n".join(lines)
