"""``${VAR}`` in a number or true/false field (``webhooks.port: ${PORT}``): the value is
converted and checked as the field's type asks, or refused at its line with what it is.

Two runners of one shared run take their ports from one spec this way, so the tests end
with real runs on the emulators, through the CLI, with the variable set, unset and bad.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.errors import SpecError
from pipeline.spec.load import load_spec, spec_json_schema

from .conftest import write_spec

KNOWN = ("pixai", "apixo", "pixellabs")
VARS = ("PORT", "CONC", "LEASE", "BUDGET", "PRIVATE", "RETRIES", "FACTOR", "CAP", "REPEATS")

TYPED = """
name: typed
providers:
  pixellabs:
    concurrency: ${CONC}
    allow_private_downloads: ${PRIVATE}
    limits: {max_response_bytes: "${CAP:-65536}"}
    price: {per_job: 0.01}
    budget: ${BUDGET}
prompts: [a fox]
run:
  lease: ${LEASE}
  retries: ${RETRIES}
  poll: {factor: "${FACTOR}"}
webhooks:
  port: ${PORT}
"""
GOOD = {
    "CONC": "3",
    "PRIVATE": "true",
    "BUDGET": "2.5",
    "LEASE": "45s",
    "RETRIES": "0",
    "FACTOR": "2",
    "PORT": "8099",
}


def _load(tmp_path: Path, env: dict[str, str], *, require_env: bool = True) -> Any:
    spec = write_spec(tmp_path, TYPED)
    return load_spec(spec, known_providers=KNOWN, env=env, require_env=require_env)


def _error(tmp_path: Path, env: dict[str, str], *, require_env: bool = True) -> str:
    with pytest.raises(SpecError) as caught:
        _load(tmp_path, env, require_env=require_env)
    return str(caught.value)


def test_a_whole_value_variable_takes_the_type_of_its_field(tmp_path: Path) -> None:
    spec = _load(tmp_path, GOOD)
    provider = spec.providers["pixellabs"]
    assert provider.concurrency == 3
    assert provider.allow_private_downloads is True
    assert provider.max_response_bytes == 65536  # ${CAP:-65536}: the default, as a number
    assert provider.budget == 2.5
    assert (spec.run.lease, spec.run.retries, spec.run.poll_factor) == (45.0, 0, 2.0)
    assert spec.webhooks.port == 8099
    assert spec.unset_env == {}


@pytest.mark.parametrize(
    ("name", "value", "line", "says"),
    [
        ("PORT", "abc", 15, "webhooks.port: ${PORT} is 'abc', expected a whole number"),
        ("PORT", "70000", 15, "webhooks.port: ${PORT} is 70000: must be at most 65535"),
        ("PORT", "80.5", 15, "webhooks.port: ${PORT} is '80.5', expected a whole number"),
        ("CONC", "0", 4, "providers.pixellabs.concurrency: ${CONC} is 0: must be at least 1"),
        (
            "PRIVATE",
            "yes",
            5,
            "providers.pixellabs.allow_private_downloads: ${PRIVATE} is 'yes', expected true",
        ),
        ("BUDGET", "lots", 8, "providers.pixellabs.budget: ${BUDGET} is 'lots', expected a num"),
        ("BUDGET", "nan", 8, "providers.pixellabs.budget: ${BUDGET} is 'nan', expected a num"),
        ("LEASE", "soon", 11, "run.lease: bad duration 'soon'"),
        ("RETRIES", "", 12, "run.retries: ${RETRIES} is '', expected a whole number"),
    ],
)
def test_a_bad_value_is_refused_at_its_line_saying_what_it_is(
    tmp_path: Path, name: str, value: str, line: int, says: str
) -> None:
    text = _error(tmp_path, {**GOOD, name: value})
    assert f"spec.yaml:{line}: {says}" in text, text


def test_every_bad_value_is_shown_at_once(tmp_path: Path) -> None:
    text = _error(tmp_path, {**GOOD, "PORT": "abc", "CONC": "-2", "PRIVATE": "1"})
    assert "spec.yaml:4: providers.pixellabs.concurrency: ${CONC} is -2" in text, text
    assert "spec.yaml:5: providers.pixellabs.allow_private_downloads: ${PRIVATE} is '1'" in text
    assert "spec.yaml:15: webhooks.port: ${PORT} is 'abc'" in text


def test_a_long_value_is_not_shown_since_it_may_be_a_secret(tmp_path: Path) -> None:
    text = _error(tmp_path, {**GOOD, "PORT": "sk-live-0123456789abcdef0123456789"})
    assert "sk-live" not in text
    assert "webhooks.port: ${PORT} is 34 characters of text (not shown: it may be a secret)" in text


def test_a_variable_inside_other_text_is_not_converted(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "providers: {pixai: {concurrency: '1${N}'}}\nprompts: [x]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN, env={"N": "2"})
    assert "expected a whole number, got '1${N}'" in str(caught.value)
    assert "only a value that is all one ${VAR} is converted" in str(caught.value)


def test_a_job_shaping_number_is_converted_too(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "providers: {pixai: {}}\nprompts: [x]\nrepeats: ${N}\nseeds: ['${S}', 9]\n"
    )
    loaded = load_spec(spec, known_providers=KNOWN, env={"N": "2", "S": "7"})
    assert loaded.repeats == 2 and tuple(loaded.seeds or ()) == (7, 9)
    with pytest.raises(SpecError, match="environment variable N is not set"):
        load_spec(spec, known_providers=KNOWN, env={"S": "7"}, require_env=False)


def test_a_dry_run_without_the_variables_uses_the_defaults_and_names_them(
    tmp_path: Path,
) -> None:
    spec = _load(tmp_path, {}, require_env=False)
    assert sorted(spec.unset_env) == sorted(set(GOOD))
    assert spec.webhooks.port == 0 and spec.providers["pixellabs"].concurrency >= 1
    assert spec.unset_env["PORT"] == ("webhooks", "port")


def test_a_run_needs_them(tmp_path: Path) -> None:
    text = _error(tmp_path, {k: v for k, v in GOOD.items() if k != "PORT"})
    assert "spec.yaml:15: webhooks.port: environment variable PORT is not set" in text


# --- the JSON Schema: editors accept a ${VAR} wherever it works --------------------------


def test_the_schema_accepts_a_variable_in_a_typed_field_and_refuses_other_text() -> None:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(TYPED)
    data["run"]["deadline"] = "${DEADLINE:-2h}"
    data["seeds"] = {"start": "${SEED0}", "count": 3}
    assert list(validator.iter_errors(data)) == []
    for bad in ("abc", "${PORT", "$PORT", "${PORT}0"):
        data["webhooks"]["port"] = bad
        assert list(validator.iter_errors(data)), bad
    data["webhooks"]["port"] = 8080
    data["version"] = "${VERSION}"  # a choice of one is not a typed value
    assert list(validator.iter_errors(data))


# --- end to end: the CLI, on the emulators ---------------------------------------------

HOOKS = """
name: hooks
output: {{root: {root}}}
providers:
  apixo:
    emulate: {{task_seconds: 0.2}}
    concurrency: ${{CONC:-2}}
    params: {{model: nano-banana}}
    options: {{completion: webhook}}
webhooks:
  port: ${{PORT}}
prompts: [a fox, a hare]
"""


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly these of ``VARS`` set (the others removed)."""
    base = {k: v for k, v in os.environ.items() if k not in VARS}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        check=False,
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _callback_urls(root: Path) -> list[str]:
    """The callback URLs the APIXO emulator was given (its ledger of paid submits)."""
    with sqlite3.connect(root / ".emulators" / "apixo" / "state.sqlite") as db:
        rows = db.execute("SELECT doc FROM charges").fetchall()
    return [json.loads(doc)["body"]["callback_url"] for (doc,) in rows]


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_dry_runs_without_the_port_name_it(tmp_path: Path, command: str) -> None:
    spec = write_spec(tmp_path, HOOKS.format(root=tmp_path / "out"))
    result = _cli(command, str(spec), cwd=tmp_path, env={})
    assert result.returncode == 0, result.stderr
    assert "run needs: PORT (not set)" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_bad_port_is_refused_by_every_command(tmp_path: Path, command: str) -> None:
    spec = write_spec(tmp_path, HOOKS.format(root=tmp_path / "out"))
    result = _cli(command, str(spec), cwd=tmp_path, env={"PORT": "abc"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{spec}:10: webhooks.port: ${{PORT}} is 'abc', expected a whole number" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_listens_on_the_port_it_is_given_and_status_needs_none(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, HOOKS.format(root=tmp_path / "out"))
    unset = _cli("run", "-q", str(spec), cwd=tmp_path, env={})
    assert unset.returncode == 2
    assert f"{spec}:10: webhooks.port: environment variable PORT is not set" in unset.stderr

    port = _free_port()
    result = _cli("run", "-q", str(spec), cwd=tmp_path, env={"PORT": str(port), "CONC": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    urls = _callback_urls(tmp_path / "out")
    assert len(urls) == 2 and all(f"//127.0.0.1:{port}/hooks/" in url for url in urls), urls

    status = _cli("status", str(spec), cwd=tmp_path, env={})  # reads only the output root
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr


def test_an_unquoted_variable_in_a_flow_mapping_says_to_quote_it(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "providers: {pixai: {concurrency: ${N}}}\nprompts: [x]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, known_providers=KNOWN, env={"N": "2"})
    assert caught.value.line == 1
    assert caught.value.hint is not None and 'quote a ${VAR}: port: "${PORT}"' in caught.value.hint
