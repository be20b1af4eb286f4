"""Bad input gets a clear error naming file:line and the field, exit 2, no traceback, and
nothing is written or sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_cli, write_spec

GOOD_HEAD = """
name: bad
output:
  root: {root}
"""

CASES = {
    "yaml_syntax": (
        """
providers:
  pixellabs:
    concurrency: [1, 2
prompts: ["a"]
""",
        8,
        None,
    ),
    "unknown_provider": (
        """
providers:
  dalle9000:
    concurrency: 2
prompts: ["a"]
""",
        6,
        "providers.dalle9000",
    ),
    "wrong_type": (
        """
providers:
  pixellabs:
    concurrency: lots
prompts: ["a"]
""",
        7,
        "providers.pixellabs.concurrency",
    ),
    "missing_var": (
        """
providers:
  pixellabs:
    api_key: ${PIPELINE_TEST_SURELY_UNSET_VAR}
prompts: ["a"]
""",
        7,
        "providers.pixellabs.api_key",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_exits_2_with_file_line_and_field(tmp_path: Path, case: str) -> None:
    body, line, field = CASES[case]
    root = tmp_path / "out"
    spec = write_spec(tmp_path, GOOD_HEAD.format(root=root) + body)
    dry_runs = () if case == "missing_var" else ("validate", "plan")  # need no secrets
    for command in ("run", *dry_runs):
        result = run_cli(command, str(spec), cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert f"{spec}:{line}" in result.stderr, result.stderr
        if field:
            assert field in result.stderr, result.stderr
    assert not root.exists(), "nothing may be written for a bad spec"


def test_bad_enum_value_is_caught_before_anything_is_sent(tmp_path: Path) -> None:
    root = tmp_path / "out"
    spec = write_spec(
        tmp_path,
        GOOD_HEAD.format(root=root)
        + """
providers:
  pixellabs:
    base_url: http://127.0.0.1:9
prompts: ["a"]
matrix:
  style: [anime, watercolor]
""",
    )
    result = run_cli("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "watercolor" in result.stderr and "matrix.style" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists()


def test_missing_spec_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_status_of_a_directory_without_manifest(tmp_path: Path) -> None:
    result = run_cli("status", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "manifest" in result.stderr


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ("{completion: telepathy}", "cannot complete by 'telepathy'"),
        ("{colour: blue}", "unknown option 'colour'"),
        ("{completion: webhook, callback_timeout: soon}", "expected a duration"),
    ],
)
def test_bad_provider_options_are_spec_errors(tmp_path: Path, options: str, needle: str) -> None:
    root = tmp_path / "out"
    spec = write_spec(
        tmp_path,
        GOOD_HEAD.format(root=root)
        + f"""
providers:
  apixo:
    params: {{model: flux2}}
    options: {options}
prompts: ["a"]
""",
    )
    result = run_cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert needle in result.stderr and f"{spec}:" in result.stderr
    assert "providers.apixo.options" in result.stderr
    assert not root.exists()


@pytest.mark.parametrize(
    ("prompts", "needle"),
    [
        # the second prompt is too long: every prompt is checked, not the first only
        ('["a cat", "' + "x" * 600 + '"]', "prompt"),
        # a JSONL-style prompt item whose own params break the API's rules
        ('["a cat", {text: "a dog", params: {style: watercolor}}]', "watercolor"),
    ],
)
def test_every_prompt_and_combination_is_checked_with_every_seed(
    tmp_path: Path, prompts: str, needle: str
) -> None:
    root = tmp_path / "out"
    spec = write_spec(
        tmp_path,
        GOOD_HEAD.format(root=root)
        + f"""
providers:
  pixellabs:
    base_url: http://127.0.0.1:9
prompts: {prompts}
seeds: {{start: 0, count: 3}}
""",
    )
    result = run_cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert needle in result.stderr and f"{spec}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists()


def test_errors_of_ours_raised_inside_a_task_group_are_one_line_not_a_traceback():
    """A manifest that breaks mid-run surfaces inside an exception group: the message is
    shown as for any other PipelineError; a bug among the errors keeps its traceback."""
    from pipeline.cli import only_pipeline_errors
    from pipeline.errors import ManifestError

    damaged = ManifestError("manifest.sqlite: database disk image is malformed")
    nested = BaseExceptionGroup("run", [BaseExceptionGroup("lanes", [damaged]), damaged])
    assert only_pipeline_errors(nested) is damaged
    assert only_pipeline_errors(BaseExceptionGroup("run", [damaged, KeyError("bug")])) is None
