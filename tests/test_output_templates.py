"""Output templates over parameters and metadata, checked at load time and used end to end
on the emulators; non-ASCII prompts keep the paths a run has already recorded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline import identity
from pipeline.commands import load_checked_spec, run_spec
from pipeline.errors import SpecError
from pipeline.manifest.store import Manifest
from pipeline.models import JobState
from pipeline.spec.load import load_spec

from .conftest import FAKE_KEY, write_spec

KNOWN = ("pixai", "pixellabs", "apixo")
ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def spec_text(path: str, *, extra: str = "", prompts: str = "[a fox]") -> str:
    return (
        textwrap.dedent(
            """\
        name: t
        providers:
          pixellabs:
            params: {style: anime}
        prompts: PROMPTS
        output:
          path: "PATH"
        matrix:
          aspect_ratio: ["1:1", "16:9"]
        """
        )
        .replace("PROMPTS", prompts)
        .replace("PATH", path)
        + extra
    )


def load(tmp_path: Path, text: str):
    return load_spec(write_spec(tmp_path, text), known_providers=KNOWN, env={})


def load_error(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    return caught.value


@pytest.mark.parametrize(
    "path",
    [
        "{provider}/{aspect_ratio}/{style}/{job_id}-{index}.{ext}",
        "{quality}/{job_id}-{index}.{ext}",  # common: renders none where unset
        "{guidance}/{job_id}-{index}.{ext}",  # set in the include entry below
    ],
)
def test_templates_over_parameters_the_spec_sets_load(tmp_path: Path, path: str) -> None:
    spec = load(tmp_path, spec_text(path, extra="  include: [{guidance: 7}]\n"))
    assert spec.output.path == path


def test_a_misspelt_parameter_is_refused_at_its_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, spec_text("{provider}/{stlye}/{job_id}-{index}.{ext}"))
    assert error.line == 7 and error.path == "output.path"
    assert "unknown field {stlye}" in error.message
    assert "did you mean {style}?" in error.message
    assert "{aspect_ratio}" in (error.hint or "")


def test_a_parameter_nothing_sets_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, spec_text("{guidance}/{job_id}-{index}.{ext}"))
    assert "no provider, matrix or prompt sets 'guidance'" in error.message


def test_the_prompt_itself_is_no_path_field(tmp_path: Path) -> None:
    error = load_error(tmp_path, spec_text("{prompt}/{job_id}-{index}.{ext}"))
    assert "{prompt_slug}" in error.message and error.line == 7


def test_a_misspelt_metadata_key_is_refused(tmp_path: Path) -> None:
    """Once inline prompts take ``meta:`` (the meta part), the key they declare is offered;
    before that the schema refuses ``meta:`` itself. Refused either way."""
    prompts = "\n  - {text: 'a {x}', vars: {x: [fox]}, meta: {category: animals}}"
    text = spec_text("{meta.categroy}/{job_id}-{index}.{ext}", prompts=prompts)
    error = load_error(tmp_path, text)
    if "categroy" in error.message:
        assert "did you mean {meta.category}?" in error.message


def test_metadata_from_prompt_files_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a fox"}\n', encoding="utf-8")
    text = spec_text("{meta.category}/{job_id}-{index}.{ext}", prompts="[{file: p.jsonl}]")
    assert load(tmp_path, text).output.path.startswith("{meta.category}")
    error = load_error(tmp_path, spec_text("{meta.category}/{job_id}-{index}.{ext}"))
    assert "no prompt sets metadata 'category'" in error.message


def test_a_template_that_could_lose_outputs_is_refused_at_its_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, spec_text("{style}/{job_id}{index}.{ext}"))
    assert error.line == 7 and "after every other field" in error.message


# --- end to end -----------------------------------------------------------------------


def e2e_spec(tmp_path: Path, url: str, *, path: str, prompts: str, deadline: str = "2m") -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: templates
        output:
          root: {tmp_path / "out"}
          path: "{path}"
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
        prompts: {prompts}
        matrix:
          aspect_ratio: ["1:1", "16:9"]
          include: [{{aspect_ratio: "16:9", style: anime}}]
        seeds: [1, 2]
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: {deadline}
        """,
    )


def test_run_writes_outputs_along_parameter_folders(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    template = "{provider}/{aspect_ratio}/{style}/{job_id}-{index}.{ext}"
    spec_path = e2e_spec(
        tmp_path, emulator.urls["pixellabs"], path=template, prompts="[a fox, a red owl]"
    )
    spec = load_checked_spec(spec_path, env=ENV)

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    assert len(records) == 8 and {r.state for r in records} == {JobState.DONE}
    paths = {output.path for record in records for output in record.outputs}
    assert len(paths) == 8  # one file per output: none overwrote another
    folders = {str(Path(path).parent) for path in paths}
    assert folders == {"pixellabs/1x1/none", "pixellabs/16x9/anime"}
    for record in records:
        (output,) = record.outputs
        assert output.path.endswith(f"/{record.job.id}-0.png")
        assert (spec.output.root / output.path).is_file()


def _slug_of_earlier_versions(text: str, max_len: int = 60) -> str:
    return identity.slugify(text.encode("ascii", "ignore").decode("ascii"), max_len)


def test_a_resumed_run_keeps_the_slug_its_jobs_were_recorded_with(
    tmp_path, emulator_factory, monkeypatch
):
    """Jobs recorded before transliteration have slug ``prompt``: finishing them after the
    upgrade (here, resuming timed-out tasks) writes there, not to a second folder."""
    emulator = emulator_factory(task_seconds=3.0)
    url = emulator.urls["pixellabs"]
    template = "{provider}/{prompt_slug}/{job_id}-{index}.{ext}"
    with monkeypatch.context() as patch:
        patch.setattr("pipeline.matrix.slugify", _slug_of_earlier_versions)
        early = e2e_spec(tmp_path, url, path=template, prompts="['東京の夜景']", deadline="0.2s")
        first = run_spec(load_checked_spec(early, env=ENV), quiet=True, handle_signals=False)
    assert not first.complete
    spec = load_checked_spec(
        e2e_spec(tmp_path, url, path=template, prompts="['東京の夜景']"), env=ENV
    )
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        assert {r.state for r in manifest.iter_records()} == {JobState.TIMED_OUT}

    second = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)

    assert second.complete, second
    assert second.submitted == 0 and len(emulator.ledger("pixellabs")) == 4
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    assert {r.job.prompt_slug for r in records} == {"prompt"}
    files = sorted(p.relative_to(spec.output.root) for p in spec.output.root.rglob("*.png"))
    assert len(files) == 4 and {p.parts[1] for p in files} == {"prompt"}


def test_a_new_run_slugs_non_ascii_prompts_readably(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    spec = load_checked_spec(
        e2e_spec(
            tmp_path,
            emulator.urls["pixellabs"],
            path="{provider}/{prompt_slug}/{job_id}-{index}.{ext}",
            prompts="['東京の夜景', 'Ünïcödé café']",
        ),
        env=ENV,
    )
    assert run_spec(spec, quiet=True, handle_signals=False).complete
    folders = {p.parent.name for p in spec.output.root.rglob("*.png")}
    assert folders == {"dong-jingno-ye-jing", "unicode-cafe"}
