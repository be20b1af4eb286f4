"""Parameters a provider does not declare are refused at `validate`, with a "did you
mean", unless the spec opts that provider into pass-through (issue 12, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands import load_checked_spec, plan_text
from pipeline.errors import SpecError

from .conftest import run_cli, write_spec


def checked(tmp_path: Path, text: str) -> SpecError | None:
    try:
        load_checked_spec(write_spec(tmp_path, text), env={})
    except SpecError as exc:
        return exc
    return None


def test_a_typo_in_a_jsonl_key_fails_validate_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "negativ_prompt": "blurry"}\n')
    spec = write_spec(
        tmp_path, "providers:\n  pixellabs:\n    emulate: true\nprompts:\n  - file: p.jsonl\n"
    )
    result = run_cli("validate", str(spec), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'negativ_prompt'" in result.stderr
    assert "did you mean 'negative_prompt'" in result.stderr
    assert "pass_through" in result.stderr  # the way out, for a parameter the API does take
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("where", "line", "path"),
    [
        ("providers:\n  pixai:\n    params: {negativ_prompt: x}\nprompts: [a]\n", 3,
         "providers.pixai.params.negativ_prompt"),
        ("providers: {pixai: {}}\nprompts: [a]\nmatrix:\n  negativ_prompt: [x]\n", 4,
         "matrix.negativ_prompt"),
        ("providers: {pixai: {}}\nprompts:\n  - text: a\n    params: {negativ_prompt: x}\n", 4,
         "prompts[0].params.negativ_prompt"),
    ],
)  # fmt: skip
def test_an_undeclared_parameter_is_refused_at_its_line(
    tmp_path: Path, where: str, line: int, path: str
) -> None:
    error = checked(tmp_path, where)
    assert error is not None
    assert "did you mean 'negative_prompt'" in error.message
    assert (error.line, error.path) == (line, path)


def test_a_common_name_the_api_lacks_is_refused_too(tmp_path: Path) -> None:
    error = checked(tmp_path, "providers: {pixai: {}}\nprompts: [a]\nmatrix: {style: [anime]}\n")
    assert error is not None and "'style'" in error.message and "pixai" in error.message


def test_pass_through_names_let_those_through_and_only_those(tmp_path: Path) -> None:
    spec_text = """
        providers:
          pixai:
            pass_through: [samplingSteps]
        prompts:
          - text: a cat
            params: {samplingSteps: 25}
    """
    assert checked(tmp_path, spec_text) is None
    spec = load_checked_spec(tmp_path / "spec.yaml", env={})
    assert '"samplingSteps": 25' in "\n".join(plan_text(spec))  # and it is sent
    error = checked(tmp_path, spec_text.replace("{samplingSteps: 25}", "{samplingStep: 25}"))
    assert error is not None and "did you mean 'samplingSteps'" in error.message


def test_pass_through_true_lets_any_parameter_through(tmp_path: Path) -> None:
    spec_text = """
        providers:
          apixo:
            pass_through: true
            params: {model: sora-2, n_frames: 10, size: large}
        prompts: [a cat]
    """
    assert checked(tmp_path, spec_text) is None


def test_pass_through_is_a_list_of_names_or_true(tmp_path: Path) -> None:
    error = checked(tmp_path, "providers:\n  pixai:\n    pass_through: 3\nprompts: [a]\n")
    assert error is not None and error.line == 3


def test_declared_parameters_of_every_adapter_still_validate(tmp_path: Path) -> None:
    """Width and height are taken (as an aspect ratio) by PixelLabs and Pixverse, and a
    Pixverse model is declared: none of them is refused as undeclared."""
    spec_text = """
        providers:
          pixellabs: {params: {width: 1024, height: 1024, negative_prompt: x, style: anime}}
          acedata: {params: {model: v4.5, width: 1280, height: 720, motion: fast}}
          apixo: {params: {model: nano-banana, resolution: 2K, output_format: png}}
          pixai: {params: {width: 512, height: 768, count: 2}}
        prompts: [a cat]
        seeds: [1]
    """
    assert checked(tmp_path, spec_text) is None
