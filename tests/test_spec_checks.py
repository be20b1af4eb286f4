"""Spec checks that used to pass `validate` and then fail the run: emulator knobs, and
APIXO's HTTPS-only callback_url."""

from __future__ import annotations

import pytest

from .conftest import run_cli, write_spec

APIXO_ENV = {"APIXO_API_KEY": "apixo_test_fake_key"}


def _emulated(knobs: str) -> str:
    return f"""
    name: knobs
    providers:
      pixellabs:
        emulate: {knobs}
    prompts: [a fox]
    """


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_emulator_knob_typo_is_a_spec_error_with_a_suggestion(tmp_path, command):
    spec = write_spec(tmp_path, _emulated("{task_secnds: 2}"))

    result = run_cli(command, str(spec), cwd=tmp_path, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "spec.yaml:4: providers.pixellabs.emulate.task_secnds" in result.stderr
    assert "did you mean 'task_seconds'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_bad_knob_value_is_a_spec_error(tmp_path):
    spec = write_spec(tmp_path, _emulated("{failure_rate: 2}"))
    result = run_cli("validate", str(spec), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "providers.pixellabs.emulate.failure_rate" in result.stderr
    assert "between 0 and 1" in result.stderr


def _apixo(public_url: str, provider: str) -> str:
    return f"""
    name: hooks
    providers:
      apixo:
        {provider}
        options: {{completion: webhook}}
        params: {{model: nano-banana}}
    webhooks:
      public_url: {public_url}
    prompts: [a fox]
    """


@pytest.mark.parametrize("public_url", ["http://hooks.example.invalid/cb", "null"])
def test_real_apixo_needs_an_https_callback_url(tmp_path, public_url):
    spec = write_spec(tmp_path, _apixo(public_url, "api_key: ${APIXO_API_KEY}"))

    result = run_cli("validate", str(spec), cwd=tmp_path, env=APIXO_ENV, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "HTTPS" in result.stderr and "public_url" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "provider",
    ["emulate: {}", "{api_key: x, base_url: 'http://127.0.0.1:9'}"],
)
def test_emulated_apixo_takes_an_http_callback_url(tmp_path, provider):
    line = provider if provider.startswith("emulate") else ""
    text = _apixo("http://127.0.0.1:8080/cb", line or "api_key: x")
    if not line:
        text = text.replace("api_key: x", "api_key: x\n        base_url: http://127.0.0.1:9")
    spec = write_spec(tmp_path, text)
    result = run_cli("validate", str(spec), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_apixo_with_an_https_public_url_validates(tmp_path):
    spec = write_spec(
        tmp_path, _apixo("https://hooks.example.invalid/cb", "api_key: ${APIXO_API_KEY}")
    )
    result = run_cli("validate", str(spec), cwd=tmp_path, env=APIXO_ENV, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_emulate_without_the_emulators_extra_is_a_spec_error(tmp_path):
    """A missing extra (graphql-core here) stops `validate` at the `emulate:` line with the
    pip command, not with an ImportError traceback."""
    missing = tmp_path / "missing" / "graphql"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(
        "raise ModuleNotFoundError('No module named graphql', name='graphql')\n"
    )
    spec = write_spec(tmp_path, _emulated("{task_seconds: 1}"))
    env = {"PYTHONPATH": str(tmp_path / "missing")}
    result = run_cli("validate", str(spec), cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "spec.yaml:4: providers.pixellabs.emulate" in result.stderr
    assert "pipeline[emulators]" in result.stderr and "Traceback" not in result.stderr
