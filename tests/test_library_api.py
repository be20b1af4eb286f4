"""The library API of ``import pipeline``: the README's "Use from Python" example runs for
real on the built-in emulators, each function behaves as its CLI command does, errors
are exceptions (never SystemExit), and ``import pipeline`` stays cheap."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline.commands import plan_text, status_report
from pipeline.manifest import hold_run_lock

from .conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "pipeline" / "__init__.py"

SPEC = """
name: lib
output:
  root: {root}
providers:
  pixellabs:
    emulate: {{task_seconds: 0.2, render: false}}
    concurrency: 4
  apixo:
    emulate: {{task_seconds: 0.2, render: false}}
    params: {{model: nano-banana}}
prompts:
  - a red fox in the snow
  - text: "a {{thing}} made of glass"
    vars: {{thing: [teapot, bicycle]}}
matrix:
  aspect_ratio: ["1:1", "16:9"]
seeds: [1, 2]
run:
  poll: {{initial: 0.05s, max: 0.3s}}
  deadline: 1m
"""


def lib_spec(tmp_path: Path, **format: str) -> Path:
    return write_spec(tmp_path, SPEC.format(root=tmp_path / "out", **format))


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "the README's Use from Python section has no python block"
    return str(blocks[0])


# -- the README example ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_readme_example_runs_on_the_emulators(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = compile(readme_example(), "README.md", "exec")
    exec(code, {"__name__": "readme"})  # the README's own code, run as written
    printed = capsys.readouterr().out
    assert "finished" in printed, printed
    outputs = [p for p in (tmp_path / "out").rglob("*.png")]
    assert outputs, printed

    exec(code, {"__name__": "readme"})  # a rerun resumes: nothing to do
    assert "nothing to do" in capsys.readouterr().out


# -- load and plan -----------------------------------------------------------------------


def test_plan_counts_jobs_per_provider_as_the_cli(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    plan = pipeline.plan(spec)

    assert plan.per_provider == {"pixellabs": 12, "apixo": 12}  # 3 prompts x 2 cells x 2 seeds
    assert plan.total == 24
    assert plan.duplicates == 0
    jobs = list(plan.jobs())
    assert len(jobs) == 24 and len({job.id for job in jobs}) == 24
    assert all(isinstance(job, pipeline.Job) for job in jobs)
    assert str(plan) == "\n".join(plan_text(spec))
    assert pipeline.plan(spec.source).per_provider == plan.per_provider  # a path works too


def test_a_job_listed_twice_is_planned_once(tmp_path):
    path = write_spec(
        tmp_path,
        """
        name: twice
        providers:
          pixellabs: {emulate: true}
        prompts: [a fox, a fox, an owl]
        """,
    )
    plan = pipeline.plan(path)
    assert (plan.total, plan.duplicates) == (2, 1)
    assert len(list(plan.jobs())) == 2


def test_a_spec_from_text_or_a_mapping_is_the_spec_from_its_file(tmp_path):
    path = lib_spec(tmp_path)
    text = path.read_text(encoding="utf-8")
    from_file = pipeline.load_spec(path)
    from_text = pipeline.parse_spec(text, path=path)
    data = json.loads(json.dumps(_yaml_data(text)))
    from_mapping = pipeline.parse_spec(data, path=path)

    assert from_text == from_file
    assert from_mapping.providers == from_file.providers
    assert [j.id for j in pipeline.plan(from_mapping).jobs()] == [
        j.id for j in pipeline.plan(from_file).jobs()
    ]


def _yaml_data(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def test_spec_errors_are_exceptions_with_the_line(tmp_path):
    with pytest.raises(pipeline.SpecError) as caught:
        pipeline.parse_spec("name: x\nprovider: {}\n", path=tmp_path / "nb.yaml")
    assert caught.value.file == str(tmp_path / "nb.yaml")
    assert caught.value.line == 2
    with pytest.raises(pipeline.SpecError, match="cannot read the spec"):
        pipeline.load_spec(tmp_path / "missing.yaml")
    bad = lib_spec(tmp_path).read_text().replace("concurrency: 4", "concurrency: 4\n    nope: 1")
    with pytest.raises(pipeline.PipelineError):
        pipeline.parse_spec(bad, path=tmp_path / "bad.yaml")


def test_secrets_in_a_spec_are_registered_for_redaction(tmp_path):
    from pipeline.redact import scrub

    secret = "sk-notebook-" + "7" * 24
    text = (
        lib_spec(tmp_path)
        .read_text()
        .replace("concurrency: 4", "concurrency: 4\n    api_key: ${NB_KEY}")
    )
    pipeline.parse_spec(text, path=tmp_path / "k.yaml", env={"NB_KEY": secret})
    assert secret not in scrub(f"the API said: bad key {secret}")


# -- run -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_run_returns_the_summary_and_the_manifest_reads_back(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    summary = pipeline.run(spec, quiet=True)

    assert isinstance(summary, pipeline.RunSummary)
    assert summary.complete and not summary.interrupted
    assert summary.submitted == 24
    assert summary.count(pipeline.JobState.DONE) == 24
    lines = list(pipeline.summary_text(spec, summary))
    assert lines[0].startswith("lib: finished in ")

    with pipeline.open_manifest(spec) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
        assert manifest.readonly
    assert len(records) == 24
    assert all(isinstance(r, pipeline.JobRecord) for r in records)
    for record in records:
        assert record.state is pipeline.JobState.DONE
        (output,) = record.outputs
        assert isinstance(output, pipeline.Output)
        assert (spec.output.root / output.path).stat().st_size == output.size

    for target in (spec.output.root, spec.source):  # an output folder, or the spec file
        with pipeline.open_manifest(target) as manifest:
            assert manifest.total() == 24
    report = pipeline.status(spec)
    with pipeline.open_manifest(spec) as manifest:
        assert report == status_report(manifest)
    assert report["states"] == {"done": 24}

    sheet = pipeline.report(spec, rows="seed", cols="aspect_ratio", states=["done"])
    assert sheet == spec.output.root / "report.html"  # `pipeline report`'s contact sheet
    assert sheet.read_text(encoding="utf-8").count('class="tile ') == 24
    other = pipeline.report(spec.source, dest=tmp_path / "sheet.html")  # or the spec file
    assert other == tmp_path / "sheet.html" and other.is_file()

    again = pipeline.run(spec.source, quiet=True)  # a path: loaded as `pipeline run` does
    assert again.submitted == 0 and again.already_done == 24


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_run_async_runs_inside_a_running_event_loop(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    summary = await pipeline.run_async(spec, quiet=True)
    assert summary.complete and summary.submitted == 24


@pytest.mark.anyio
async def test_sync_run_inside_an_event_loop_says_what_to_call(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    with pytest.raises(RuntimeError, match=r"await pipeline\.run_async\(spec\)"):
        pipeline.run(spec)
    assert not (spec.output.root / "manifest.sqlite").exists()


def test_a_held_output_folder_raises_run_locked(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    with hold_run_lock(spec.output.root), pytest.raises(pipeline.RunLocked, match="pid"):
        pipeline.run(spec, quiet=True)


@pytest.mark.timeout(120)
def test_a_folder_of_another_spec_is_refused_unless_adopted(tmp_path):
    spec = pipeline.load_spec(lib_spec(tmp_path))
    other = pipeline.parse_spec(
        spec.source.read_text(), path=tmp_path / "other.yaml", out=spec.output.root
    )
    assert pipeline.run(spec, quiet=True).complete
    with pytest.raises(pipeline.SpecError, match="would mix two specs' jobs"):
        pipeline.run(other, quiet=True)
    assert pipeline.run(other, quiet=True, adopt=True).already_done == 24


def test_reading_a_folder_without_a_manifest_raises(tmp_path):
    with (
        pytest.raises(pipeline.ManifestError, match="no manifest at"),
        pipeline.open_manifest(tmp_path),
    ):
        pass  # pragma: no cover


def test_errors_never_exit_the_interpreter(tmp_path):
    with pytest.raises(pipeline.SpecError):
        pipeline.run(tmp_path / "missing.yaml")
    with pytest.raises(pipeline.ManifestError):
        pipeline.status(tmp_path)


# -- the module itself --------------------------------------------------------------------


def test_every_exported_name_resolves_and_the_type_checker_sees_it():
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert set(pipeline.__all__) <= set(dir(pipeline))
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    seen_by_checker = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    } | {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    assert set(pipeline.__all__) - {"__version__"} <= seen_by_checker
    with pytest.raises(AttributeError):
        _ = pipeline.no_such_name  # type: ignore[attr-defined]


def test_the_exported_errors_are_the_whole_tree():
    from pipeline import errors

    classes = {name for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    assert classes <= set(pipeline.__all__)
    assert pipeline.PipelineError is errors.PipelineError


def test_import_pipeline_loads_no_machinery():
    code = "import sys, pipeline; print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(result.stdout))
    heavy = {
        *("pipeline.commands", "pipeline.runner", "pipeline.spec", "pipeline.manifest"),
        *("pipeline.models", "anyio", "httpx", "aiohttp", "pydantic", "yaml", "sqlite3"),
    }
    assert not heavy & loaded, heavy & loaded


def test_submodules_still_import_through_the_package():
    code = "from pipeline import retry, errors; import pipeline.cli; print(retry.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "pipeline.retry"


def test_run_async_is_a_coroutine_function():
    assert asyncio.iscoroutinefunction(pipeline.run_async)


CANCELLED_FROM_OUTSIDE = """
import asyncio, sys, anyio, pipeline

async def main():
    for n, moment in enumerate(sys.argv[2:]):
        with anyio.move_on_after(float(moment)) as scope:
            spec = f"{sys.argv[1]}/spec{n}.yaml"
            await pipeline.run_async(spec, quiet=True, handle_signals=False)
        await asyncio.sleep(0.5)  # whatever the run left running shows up now
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in left:
            task.print_stack(file=sys.stderr)
        print(moment, scope.cancelled_caught, len(left), flush=True)

anyio.run(main)
"""


@pytest.mark.timeout(300)
def test_a_run_cancelled_from_outside_closes_everything_and_returns(tmp_path):
    """A caller's ``anyio.move_on_after`` around ``run_async``, at several moments of the
    run: each returns, nothing the run started is left running, the process ends (a
    hang is a subprocess timeout, never a blocked suite)."""
    moments = ["0.3", "1.0", "2.0"]
    for n in range(len(moments)):
        write_spec(
            tmp_path,
            SPEC.format(root=tmp_path / f"out{n}").replace(
                "params: {model: nano-banana}",
                "params: {model: nano-banana}\n    options: {completion: webhook}",
            )
            + "webhooks: {host: 127.0.0.1, port: 0}\n",
            f"spec{n}.yaml",
        )
    script = tmp_path / "cancel.py"
    script.write_text(CANCELLED_FROM_OUTSIDE, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *moments],
        check=False, capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == moments, result.stdout + result.stderr
    assert any(cancelled == "True" for _, cancelled, _ in lines)  # some were cut short
    assert all(left == "0" for _, _, left in lines), result.stdout + result.stderr
