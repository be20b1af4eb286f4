"""A hostile spec is refused quickly, with exit 2 and file:line, never a traceback: YAML
alias bombs, deep nesting, output templates with format specs, absurd prompt files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import run_cli, write_spec

QUICK = 5.0  # seconds, a generous bound for a refusal on a slow, shared machine

HEAD = """\
name: hostile
providers:
  pixellabs:
    emulate: {}
"""


def _refused(tmp_path: Path, text: str, *, command: str = "validate") -> str:
    spec = write_spec(tmp_path, text)
    started = time.monotonic()
    result = run_cli(command, str(spec), cwd=tmp_path, timeout=QUICK + 10)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < QUICK, f"refused after {elapsed:.1f}s"
    return result.stderr


def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    text = HEAD + "prompts: [a fox]\n" + "matrix:\n  " + _bomb().replace("\n", "\n  ")
    stderr = _refused(tmp_path, text)
    assert "spec.yaml:" in stderr and "alias" in stderr


def test_yaml_alias_bomb_in_prompts_is_refused_fast(tmp_path):
    text = _bomb(8) + HEAD + "prompts: *l8\n"
    stderr = _refused(tmp_path, text, command="run")
    assert "spec.yaml:" in stderr and "alias" in stderr


@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_deep_nesting_is_refused_fast(tmp_path, opening):
    closing = "]" if opening == "[" else "}"
    depth = 20_000
    text = HEAD + "prompts: [a fox]\nmatrix:\n  deep: " + opening * depth + "1" + closing * depth
    stderr = _refused(tmp_path, text + "\n")
    assert "spec.yaml:7" in stderr and "deeper than" in stderr


def test_deep_block_nesting_is_refused(tmp_path):
    body = "".join("  " * i + "k:\n" for i in range(200)) + "  " * 200 + "k: 1\n"
    stderr = _refused(tmp_path, HEAD + "prompts: [a fox]\nx:\n" + body)
    assert "deeper than" in stderr


@pytest.mark.parametrize(
    "template",
    ["{job_id:>2000000000}-{index}", "{job_id}-{index:03d}", "{job_id!s}-{index}"],
)
def test_output_template_format_specs_are_refused_fast(tmp_path, template):
    text = HEAD + f'output:\n  path: "{template}"\nprompts: [a fox]\n'
    stderr = _refused(tmp_path, text)
    assert "spec.yaml:6" in stderr and "output.path" in stderr
    assert "job_id" in stderr and "prompt_slug" in stderr  # names the allowed fields


def test_a_jsonl_line_without_end_is_refused_without_reading_it_all(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "' + "x" * 40_000_000 + '"}')
    stderr = _refused(tmp_path, HEAD + "prompts:\n  - file: prompts.jsonl\n")
    assert "prompts.jsonl:1" in stderr and "longer than" in stderr


def test_a_deeply_nested_jsonl_line_is_a_spec_error(tmp_path):
    (tmp_path / "prompts.jsonl").write_text(
        '{"prompt": "a", "x": ' + "[" * 5000 + "]" * 5000 + "}\n"
    )
    stderr = _refused(tmp_path, HEAD + "prompts:\n  - file: prompts.jsonl\n")
    assert "prompts.jsonl:1" in stderr and "deeper than" in stderr
