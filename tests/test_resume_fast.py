"""A resumed run skips expanding and checking the spec when the manifest already holds
this exact expansion; any edit that changes the job list is noticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import commands
from pipeline.commands import EXPANSION_KEY, load_checked_spec, run_spec
from pipeline.manifest.store import Manifest

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def spec_file(tmp_path: Path, url: str, seeds: str = "[1]") -> Path:
    (tmp_path / "prompts.txt").write_text("a fox\na heron\n")
    return write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs: {{base_url: "{url}", api_key: "${{PIXELLABS_API_KEY}}"}}
        prompts:
          - file: prompts.txt
        seeds: {seeds}
        run:
          poll: {{initial: 0.05s, max: 0.2s}}
    """,
    )


def run(path: Path, **options: bool):
    spec = load_checked_spec(path, env=ENV, check_jobs=False)
    return run_spec(spec, quiet=True, handle_signals=False, params_checked=False, **options)


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = commands.iter_jobs

    def counting(spec):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(spec)

    monkeypatch.setattr(commands, "iter_jobs", counting)
    return calls


def test_resume_skips_expansion_until_the_spec_changes(tmp_path, emulator_factory, expansions):
    emulator = emulator_factory(task_seconds=0.1)
    path = spec_file(tmp_path, emulator.urls["pixellabs"])
    first = run(path)
    assert first.complete and first.submitted == 2
    used = len(expansions)
    assert used >= 1
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        assert manifest.meta()[EXPANSION_KEY]

    again = run(path)
    assert again.submitted == 0 and len(expansions) == used  # nothing expanded again

    path.write_text(path.read_text().replace("seeds: [1]", "seeds: [1, 2]"))
    grown = run(path)
    assert grown.submitted == 2 and grown.complete  # only the new cells
    assert len(expansions) > used

    with (tmp_path / "prompts.txt").open("a") as prompts:
        prompts.write("an owl\n")
    more = run(path)
    assert more.submitted == 2 and more.complete
    assert len(emulator.ledger("pixellabs")) == 6


def test_a_bad_parameter_is_still_caught_before_anything_is_written(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1)
    path = spec_file(tmp_path, emulator.urls["pixellabs"])
    path.write_text(path.read_text() + "matrix: {style: [watercolor]}\n")
    with pytest.raises(commands.SpecError, match="watercolor"):
        run(path)
    assert not (tmp_path / "out").exists()
