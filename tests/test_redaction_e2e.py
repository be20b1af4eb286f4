"""Keys echoed by a provider never reach a file or a terminal (contract 5 in
docs/architecture.md).

Every emulator runs with knob ``echo_auth``: its error bodies quote the caller's key bare,
inside ``Authorization: Bearer …`` and URL-encoded. Each provider is given its own fake
key (with ``/+=`` so the URL-encoded form differs) and made to fail in its own way: a
403 that fails the jobs, a 401 that stops the provider, 5xx answers that leave submits
unknown or retried. Then the key must appear nowhere: manifest bytes, snapshot, export,
status (human and JSON), the run's own output.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from .conftest import run_cli, write_spec

# key prefixes the emulators treat as forbidden (403) or invalid (401)
KEY_PREFIX = {"pixellabs": "deny", "pixai": "deny", "apixo": "bad", "acedata": "sk"}


def fake_keys() -> dict[str, str]:
    return {
        name: f"{prefix}-Zx9/Qk+{secrets.token_hex(8)}==" for name, prefix in KEY_PREFIX.items()
    }


def spec_text(root: Path) -> str:
    return f"""
    name: echo
    output:
      root: {root}
    run: {{retries: 1, deadline: 20s, http_timeout: 10s}}
    providers:
      pixellabs:
        api_key: ${{ECHO_KEY_PIXELLABS}}
        emulate: {{echo_auth: true, task_seconds: 0.2}}
      pixai:
        api_key: ${{ECHO_KEY_PIXAI}}
        emulate: {{echo_auth: true, task_seconds: 0.2}}
        options: {{completion: poll}}
      apixo:
        api_key: ${{ECHO_KEY_APIXO}}
        emulate: {{echo_auth: true, task_seconds: 0.2}}
        params: {{model: nano-banana}}
      acedata:
        api_key: ${{ECHO_KEY_ACEDATA}}
        emulate: {{echo_auth: true, task_seconds: 0.2, error_rate: 1.0}}
        params: {{duration: 5, quality: 360p}}
    prompts: ["a red fox in the snow"]
    seeds: [1, 2]
    """


def leaks(text: str | bytes, keys: dict[str, str]) -> list[str]:
    """Every form of every key found in ``text`` (bare, URL-encoded, its random core)."""
    data = text if isinstance(text, bytes) else text.encode()
    found = []
    for name, key in keys.items():
        core = key.split("+", 1)[1][:16]  # the random part alone
        for form in {key, quote(key, safe=""), quote_plus(key), core}:
            if form.encode() in data:
                found.append(f"{name}: {form}")
    return found


@pytest.mark.timeout(240)
def test_echoed_keys_are_stored_and_printed_nowhere(tmp_path: Path) -> None:
    keys = fake_keys()
    env = {f"ECHO_KEY_{name.upper()}": key for name, key in keys.items()}
    root = tmp_path / "out"
    spec = write_spec(tmp_path, spec_text(root))

    run = run_cli("run", str(spec), cwd=tmp_path, env=env)
    assert run.returncode == 1, run.stderr  # nothing can finish
    assert not leaks(run.stdout + run.stderr, keys), run.stdout + run.stderr
    assert "[redacted]" in run.stdout + run.stderr, (run.stdout, run.stderr)

    stored = [p for p in root.iterdir() if p.name.startswith("manifest.")]
    assert {p.name for p in stored} >= {"manifest.sqlite", "manifest.jsonl"}
    for path in stored:
        assert not leaks(path.read_bytes(), keys), path
    snapshot = (root / "manifest.jsonl").read_text()
    assert "[redacted]" in snapshot

    for args in (["export", str(root)], ["status", str(root)], ["status", "--json", str(root)],
                 ["status", str(spec)], ["export", str(spec)]):  # fmt: skip
        shown = run_cli(*args, cwd=tmp_path, env=env)
        assert shown.returncode == 0, (args, shown.stderr)
        assert not leaks(shown.stdout + shown.stderr, keys), (args, shown.stdout)
    status = run_cli("status", str(root), cwd=tmp_path, env=env).stdout
    assert "[redacted]" in status, status


# -- the emulator knob: each API echoes the key in its own error format -----------------

ECHO_CASES = {
    # API: (request, where the message is in its error body)
    "pixellabs": (("POST", "/v1/generate", {"prompt": "x"}), ("message",)),
    "apixo": (("POST", "/api/v1/generateTask/nano-banana", {}), ("data", "error")),
    "acedata": (("POST", "/pixverse/videos", {"prompt": "x"}), ("error", "message")),
    "pixai": (("POST", "/graphql", {"query": "{ nothing }"}), ("message",)),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(ECHO_CASES))
async def test_echo_auth_knob_quotes_the_key_in_the_apis_error_format(name: str) -> None:
    from .emulator_helpers import emulator_client

    key = "deny-Zx9/Qk+0000=="  # refused (403/400) by every emulator
    (method, path, body), where = ECHO_CASES[name]
    headers = {"Authorization": f"Bearer {key}"}
    for echo in (False, True):
        async with emulator_client(name, headers, echo_auth=echo) as (_, client):
            response = await client.request(method, path, json=body)
        assert response.status_code >= 400
        message: object = response.json()
        for step in where:
            assert isinstance(message, dict), response.text
            message = message[step]
        assert isinstance(message, str)
        if echo:
            assert f"token {key} " in message, message
            assert f"Authorization: Bearer {key}" in message
            assert quote(key, safe="") in message
        else:
            assert "Zx9" not in response.text
