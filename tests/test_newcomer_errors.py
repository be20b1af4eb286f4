"""Issue 13, items 3 and 4: dry runs need no secrets, and a spec's mistakes are all
shown at once, in our words, with a fix; status says what a rerun can do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.spec import load_spec

from .conftest import run_cli, write_spec

KNOWN = ("pixai", "apixo", "pixellabs")
KEY_VARS = ("PIXAI_API_KEY", "APIXO_API_KEY")

TWO_KEYS = """
name: keys
output: {{root: {root}}}
providers:
  pixai:
    api_key: ${{PIXAI_API_KEY}}
  apixo:
    api_key: ${{APIXO_API_KEY}}
    params: {{model: flux2}}
prompts: ["a fox"]
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``run_cli`` with the providers' key variables removed from the environment
    (``run_cli`` can only add variables; an empty one counts as set)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        check=False,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k not in KEY_VARS},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- item 3: dry runs need no secrets ---------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_dry_runs_work_without_the_keys_and_name_them(tmp_path: Path, command: str) -> None:
    spec = write_spec(tmp_path, TWO_KEYS.format(root=tmp_path / "out"))
    result = _run(command, str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run needs: APIXO_API_KEY, PIXAI_API_KEY (not set)" in result.stdout
    assert not (tmp_path / "out").exists()


def test_run_still_requires_the_keys(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TWO_KEYS.format(root=tmp_path / "out"))
    result = _run("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    stderr = result.stderr
    assert (
        f"{spec}:5: providers.pixai.api_key: environment variable PIXAI_API_KEY is not set"
        in stderr
    )
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_a_variable_that_changes_the_jobs_is_needed_even_for_a_plan(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        providers: {pixai: {}}
        prompts: ["a ${ANIMAL}"]
        """,
    )
    result = _run("plan", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "prompts[0]: environment variable ANIMAL is not set" in result.stderr
    assert "changes the jobs" in result.stderr


def test_library_plans_without_secrets_and_run_refuses(tmp_path: Path) -> None:
    import pipeline

    path = write_spec(tmp_path, TWO_KEYS.format(root=tmp_path / "out"))
    spec = pipeline.load_spec(path, env={})
    assert sorted(spec.unset_env) == ["APIXO_API_KEY", "PIXAI_API_KEY"]
    assert pipeline.plan(spec).total == 2
    with pytest.raises(SpecError, match="environment variable PIXAI_API_KEY is not set"):
        pipeline.run(spec, quiet=True, handle_signals=False)
    assert not (tmp_path / "out").exists()


def test_the_internal_loader_still_requires_them_by_default(tmp_path: Path) -> None:
    path = write_spec(tmp_path, TWO_KEYS.format(root=tmp_path / "out"))
    with pytest.raises(SpecError, match="PIXAI_API_KEY is not set"):
        load_spec(path, known_providers=KNOWN, env={})


# --- item 4: every problem at once, in our words ----------------------------------------


THREE_MISTAKES = """
providers:
  pixai:
    concurency: 4
  pixellabs:
    concurrency: lots
prompts: ["a fox"]
run:
  poll: {factor: -1}
"""


def test_every_problem_is_shown_with_its_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, THREE_MISTAKES)
    result = run_cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    stderr = result.stderr
    assert f"{spec}:3: providers.pixai.concurency: unknown key 'concurency'" in stderr
    assert "did you mean 'concurrency'?" in stderr
    assert (
        f"{spec}:5: providers.pixellabs.concurrency: expected a whole number, got 'lots'" in stderr
    )
    assert f"{spec}:8: run.poll.factor:" in stderr
    assert "more problem" not in stderr


def test_problems_found_after_the_schema_are_all_shown_too(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        name: a/b
        providers:
          pixia: {}
        prompts: [{file: missing.txt}]
        """,
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    text = str(caught.value)
    assert "spec.yaml:1: name: bad name" in text
    assert (
        "spec.yaml:3: providers.pixia.type: unknown provider type 'pixia'; did you mean 'pixai'?"
        in text
    )
    assert "spec.yaml:4: prompts[0].file: prompt file not found" in text


def test_the_list_of_problems_is_capped(tmp_path: Path) -> None:
    from pipeline.spec import MAX_SHOWN

    keys = "\n".join(f"    bad{i}: 1" for i in range(30))
    spec = write_spec(tmp_path, f"providers:\n  pixai:\n{keys}\n  apixo:\n{keys}\nprompts: [x]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    assert len(caught.value.more) == MAX_SHOWN - 1
    assert caught.value.omitted == 60 - MAX_SHOWN
    assert str(caught.value).endswith(f"(and {60 - MAX_SHOWN} more problems)")


P = "\nprompts: [x]"


@pytest.mark.parametrize(
    ("yaml", "says"),
    [
        pytest.param(
            "providers: {pixai: {concurrency: abc}}" + P,
            "expected a whole number, got 'abc'",
            id="int",
        ),
        pytest.param(
            "providers: {pixai: {concurrency: 2.5}}" + P,
            "expected a whole number, got 2.5",
            id="int-from-float",
        ),
        pytest.param(
            "providers: {pixai: {concurrency: 0}}" + P, "must be at least 1, got 0", id="ge"
        ),
        pytest.param("providers: {pixai: {api_key: 12}}" + P, "expected text, got 12", id="string"),
        pytest.param(
            "providers: {pixai: {params: [1]}}" + P, "expected a mapping, got a list", id="dict"
        ),
        pytest.param(
            "providers: {pixai: {}}\nrepeats: 'x'" + P,
            "expected a whole number, got 'x'",
            id="repeats",
        ),
        pytest.param(
            "providers: {pixai: {}}\nversion: 2" + P, "expected one of 1, got 2", id="literal"
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [{file: a.txt, format: jsnl}]",
            "expected one of txt, csv, jsonl, got 'jsnl'",
            id="literal-text",
        ),
        pytest.param(
            "providers: {pixai: {allow_private_downloads: maybe}}" + P,
            "expected true or false, got 'maybe'",
            id="bool",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: []", "needs at least 1 item, got 0", id="too-short"
        ),
        pytest.param("providers: {pixai: {}}", "prompts: this field is required", id="missing"),
        pytest.param(
            "providers: {pixai: {}}\nname: ''" + P, "must not be empty", id="string-too-short"
        ),
    ],
)
def test_messages_are_in_our_words(tmp_path: Path, yaml: str, says: str) -> None:
    spec = write_spec(tmp_path, yaml + "\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    message = str(caught.value)
    assert says in message, message
    assert "Input should" not in message and "should have" not in message


def test_a_literal_typo_gets_a_suggestion(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "providers: {pixai: {}}\nprompts: [{file: a.txt, format: jsnl}]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    assert caught.value.hint == "did you mean 'jsonl'?"


def test_a_value_from_a_variable_is_never_quoted(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "providers: {pixai: {concurrency: '${SECRETISH}'}}\nprompts: [x]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN, env={"SECRETISH": "sk-live-123"})
    assert "sk-live-123" not in str(caught.value)
    assert "${SECRETISH} is 11 characters of text (not shown: it may be a secret)" in str(
        caught.value
    )


def test_an_enum_typo_of_a_parameter_gets_a_suggestion(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        providers: {pixellabs: {base_url: "http://127.0.0.1:9"}}
        prompts: ["a"]
        matrix: {style: [animee]}
        """,
    )
    result = run_cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'anime'?" in result.stderr, result.stderr


# --- status: what is not done, and what a rerun can do ----------------------------------


def _emulated(tmp_path: Path, knobs: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: st
        output: {{root: {tmp_path / "out"}}}
        providers:
          pixellabs:
            emulate: {{task_seconds: 0.05, task_jitter: 0, {knobs}}}
        prompts: ["a red fox"]
        matrix: {{style: [anime]}}
        """,
    )


def test_status_lists_failures_with_prompt_params_and_retry_hint(tmp_path: Path) -> None:
    spec = _emulated(tmp_path, "failure_rate: 1")
    run = run_cli("run", "--quiet", str(spec), cwd=tmp_path, timeout=120)
    assert run.returncode != 0, run.stdout
    result = run_cli("status", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "failed" in result.stdout
    assert 'prompt: "a red fox"' in result.stdout
    assert '"style": "anime"' in result.stdout
    assert f"`pipeline run {spec} --retry-failed`" in result.stdout
    assert "--resubmit-unknown" not in result.stdout
    report = json.loads(run_cli("status", "--json", str(spec), cwd=tmp_path).stdout)
    assert report["failures"][0]["prompt"] == "a red fox"


def test_status_says_an_unknown_job_may_be_paid(tmp_path: Path) -> None:
    spec = _emulated(tmp_path, "error_after_create_rate: 1")
    run = run_cli("run", "--quiet", str(spec), cwd=tmp_path, timeout=120)
    assert run.returncode != 0, run.stdout
    result = run_cli("status", str(tmp_path / "out"), cwd=tmp_path)
    assert "unknown" in result.stdout, result.stdout
    assert "may exist on the provider and may be paid for" in result.stdout
    assert "pipeline run SPEC --resubmit-unknown" in result.stdout
    assert "--retry-failed" not in result.stdout


def test_every_parameter_and_option_problem_is_shown(tmp_path: Path) -> None:
    """The checks against each API run after loading: they too show all their problems."""
    spec = write_spec(
        tmp_path,
        """
        providers:
          pixellabs:
            base_url: http://127.0.0.1:9
            params: {stlye: anime}
          apixo:
            params: {model: flux2}
            options: {completoin: poll}
        prompts: ["a"]
        matrix: {style: [animee]}
        """,
    )
    result = run_cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    stderr = result.stderr
    assert "unknown option 'completoin'; did you mean 'completion'?" in stderr, stderr
    spec.write_text(spec.read_text().replace("completoin", "completion"))
    stderr = run_cli("validate", str(spec), cwd=tmp_path).stderr
    assert f"{spec}:4: providers.pixellabs.params.stlye:" in stderr, stderr
    assert "did you mean 'style'?" in stderr
    assert f"{spec}:9: matrix.style:" in stderr and "did you mean 'anime'?" in stderr


def test_an_unset_variable_in_a_number_is_named_by_plan(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "providers: {pixai: {concurrency: '${CONC}'}}\nprompts: [x]\n")
    result = _run("plan", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run needs: CONC (not set)" in result.stdout


def test_an_unset_variable_in_a_choice_says_to_set_it(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "version: '1${V}'\nproviders: {pixai: {}}\nprompts: [x]\n")
    result = _run("plan", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "expected one of 1, got '1${V}'" in result.stderr
    assert "needed even by plan and validate: export it" in result.stderr


def test_every_unknown_key_of_a_section_is_named_at_its_line(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "providers:\n  pixai:\n    concurency: 2\n    rat: 5/s\nprompts: [x]\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    text = str(caught.value)
    assert "spec.yaml:3: providers.pixai.concurency: unknown key 'concurency'" in text
    assert "spec.yaml:4: providers.pixai.rat: unknown key 'rat'" in text
    assert "did you mean 'rate'?" in text


def test_an_unknown_key_does_not_hide_a_bad_value_beside_it(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "providers:\n  pixai:\n    concurency: 2\n    rate: fast\n"
        "    limits: {max_response_byte: 1, max_download_bytes: -5}\nprompts: [x]\n",
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    text = str(caught.value)
    assert "spec.yaml:3: providers.pixai.concurency: unknown key 'concurency'" in text
    assert "spec.yaml:4: providers.pixai.rate:" in text
    assert "providers.pixai.limits.max_response_byte: unknown key" in text
    assert "providers.pixai.limits.max_download_bytes: must be at least" in text


def test_a_misspelt_required_key_is_named_once_not_also_as_missing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "provders:\n  pixai: {}\nprompts: [x]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    text = str(caught.value)
    assert "spec.yaml:1: provders: unknown key 'provders'" in text
    assert "did you mean 'providers'?" in text
    assert "this field is required" not in text


# --- every problem of a section, each at its line ---------------------------------------


def test_every_problem_within_one_section_is_shown(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        providers:
          pixai:
            base_url: ftp://x
            params: {prompt: p}
            budget: 5
        prompts:
          - text: "{a} {b}"
            vars: {c: [1], d: [2]}
            meta: {ok: 1, bad: [1], worse: {x: 1}}
        matrix:
          provider: [pixai, nope, never]
          exclude: [{a: 1, b: 2}]
        seeds: [1, 1, 2, 2]
        """,
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN)
    text = str(caught.value)
    for line, says in [
        (3, "base_url must start with http"),
        (4, "'prompt' is set from prompts:"),
        (5, "a budget needs a price"),
        (7, "unknown variable {a}"),
        (7, "unknown variable {b}"),
        (8, "variable 'c' is not used"),
        (8, "variable 'd' is not used"),
        (9, "prompts[0].meta.bad"),
        (9, "prompts[0].meta.worse"),
        (11, "provider 'nope' is not defined"),
        (11, "provider 'never' is not defined"),
        (12, "exclude key 'a'"),
        (12, "exclude key 'b'"),
        (13, "seed 1 is listed twice"),
        (13, "seed 2 is listed twice"),
    ]:
        assert any(
            row.startswith(f"{spec}:{line}: ") and says in row for row in text.splitlines()
        ), (line, says, text)
