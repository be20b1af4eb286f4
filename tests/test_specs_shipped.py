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


def test_the_quickstart_plans_its_cost_with_no_keys_in_the_environment(tmp_path: Path) -> None:
    """`pipeline plan specs/quickstart.yaml` shows the estimate per provider and in total
    with an environment that holds no API key at all (issue 13's done-when)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", str(repo / "specs" / "quickstart.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "cost (estimated from the spec's prices, in USD):" in result.stdout
    for provider in ("pixellabs", "pixai", "apixo", "acedata"):
        assert f"  {provider}: 12 jobs, " in result.stdout
    assert "  total: 1.80 USD" in result.stdout
