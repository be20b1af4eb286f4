"""The benchmark harness cannot rot: every scenario runs here at a tiny size, through
the same code paths as ``make bench`` (benchmarks.scenarios.*, the peers, the drivers,
the report), writing its results to a temporary file instead of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.__main__ import SCENARIOS
from benchmarks.common import Config, Row

pytestmark = pytest.mark.slow


def tiny(tmp_path: Path) -> Config:
    return Config(size="tiny", runs=1, workdir=tmp_path, log=lambda _text: None)


def measured(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.values]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_runs_and_reports(name: str, tmp_path: Path) -> None:
    if name == "shared":
        needs_postgres()
    rows = SCENARIOS[name].run(tiny(tmp_path))

    assert measured(rows), rows
    for row in measured(rows):
        assert all(value >= 0 for value in row.values), row
    text = report.section(rows, mode="tiny", runs=1, seconds=1.0)
    results = tmp_path / "RESULTS.md"
    report.append(text, results)
    assert rows[0].scenario in results.read_text()
    if name == "shared":
        check_shared(rows)


def needs_postgres() -> None:
    """Skip where no throwaway PostgreSQL can start (fail instead under
    PIPELINE_REQUIRE_POSTGRES=1, as the PostgreSQL tests do)."""
    from benchmarks.scenarios.shared import postgres_missing
    from tests import pgserver

    missing = postgres_missing()
    if missing:
        pgserver.unavailable(missing)


def check_shared(rows: list[Row]) -> None:
    """One runner on PostgreSQL finishes every job, and each PostgreSQL figure stands
    next to SQLite's from the same round."""
    one = next(row for row in rows if row.metric.startswith("jobs/s, 1 runner"))
    assert one.values and not one.note  # one runner finishes every job
    for row in rows:
        if "PostgreSQL manifest" in row.metric:
            assert row.baseline == "SQLite" and row.baseline_values, row
            assert row.pairs or row.metric.startswith("PostgreSQL server"), row
    machine = next(row for row in rows if row.metric.startswith("whole-machine"))
    assert "everything on the machine" in machine.note


def test_overhead_compares_with_the_aiohttp_peer(tmp_path: Path) -> None:
    config = tiny(tmp_path)
    config.options = {"backends": ("aiohttp",)}
    rows = SCENARIOS["overhead"].run(config)

    cpu = next(row for row in rows if row.metric == "runner CPU per job")
    assert cpu.baseline == "aiohttp script"
    assert cpu.baseline_values and cpu.pairs and cpu.passed is not None


def test_cli_writes_a_dated_section(tmp_path: Path) -> None:
    from benchmarks.__main__ import main

    results = tmp_path / "RESULTS.md"
    argv = ["--size", "tiny", "--runs", "1", "--scenario", "downloads", "--results", str(results)]
    argv += ["--workdir", str(tmp_path / "work")]
    assert main(argv) == 0
    text = results.read_text()
    assert "Machine:" in text and "httpx-aiohttp" in text and "| 2 downloads" in text
