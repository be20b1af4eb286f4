"""Third-party providers are found through the `pipeline.providers` entry point group.

The test installs the example plugin the way pip would leave it (a dist-info folder with
entry_points.txt on sys.path), so the real importlib.metadata discovery is exercised."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import PluginError
from pipeline.providers import registry

from .conftest import run_cli, write_spec

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


PROVIDER_ENTRY = "[pipeline.providers]\necho = pipeline_echo:EchoProvider\n"
EMULATOR_ENTRY = "[pipeline.emulators]\necho = pipeline_echo.emulator:create_app\n"


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str) -> Iterator[Path]:
    """The example plugin as pip leaves it, declaring ``entry_points`` (its text)."""
    dist = tmp_path / "pipeline_echo-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pipeline-echo\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN))
    registry.available.cache_clear()
    yield tmp_path
    registry.available.cache_clear()
    for name in ("pipeline_echo", "pipeline_echo.emulator"):
        sys.modules.pop(name, None)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from install(tmp_path, monkeypatch, PROVIDER_ENTRY + EMULATOR_ENTRY)


@pytest.fixture
def plugin_without_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from install(tmp_path, monkeypatch, PROVIDER_ENTRY)


def test_entry_point_provider_is_listed_and_usable(installed_plugin: Path) -> None:
    providers = registry.available()
    assert "echo" in providers and providers["echo"].title.startswith("Echo")
    assert "pixellabs" in providers  # built-ins stay


def test_plugin_shows_in_cli_and_validates_a_spec(installed_plugin: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{installed_plugin}:{PLUGIN}"}
    listing = run_cli("providers", cwd=tmp_path, env=env)
    assert listing.returncode == 0 and "echo — Echo (example plugin)" in listing.stdout
    spec = tmp_path / "echo.yaml"
    spec.write_text("providers:\n  echo: {api_key: k}\nprompts: [a kite]\n")
    plan = run_cli("plan", str(spec), cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    assert 'POST /v1/jobs {"prompt": "a kite"}' in plan.stdout


def echo_spec(tmp_path: Path, emulate: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: echo
        providers:
          echo:
            emulate: {emulate}
        prompts: [a kite, a boat]
        output: {{root: {tmp_path / "out"}}}
        """,
        name="echo.yaml",
    )


@pytest.mark.parametrize("emulate", ["true", "{task_seconds: 1}"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_emulate_for_a_plugin_without_an_emulator_fails_validation(
    plugin_without_emulator: Path, tmp_path: Path, command: str, emulate: str
) -> None:
    env = {"PYTHONPATH": f"{plugin_without_emulator}:{PLUGIN}"}
    result = run_cli(command, str(echo_spec(tmp_path, emulate)), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "echo.yaml:4: providers.echo.emulate" in result.stderr
    assert "no emulator for echo" in result.stderr and "pipeline.emulators" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_plugin_emulator_has_its_knobs_checked(installed_plugin: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{installed_plugin}:{PLUGIN}"}
    spec = echo_spec(tmp_path, "{failure_rat: 0.5}")
    result = run_cli("validate", str(spec), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "echo.yaml:4: providers.echo.emulate.failure_rat" in result.stderr
    assert "did you mean 'failure_rate'" in result.stderr


def test_a_plugin_runs_on_its_own_emulator(installed_plugin: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{installed_plugin}:{PLUGIN}"}
    spec = echo_spec(tmp_path, "{task_seconds: 0.2}")
    assert run_cli("validate", str(spec), cwd=tmp_path, env=env).returncode == 0
    result = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


@pytest.mark.anyio
async def test_the_plugin_adapter_against_its_emulator(installed_plugin: Path) -> None:
    from pipeline.emulators import serve
    from pipeline.http.client import make_api_client
    from pipeline.models import Job, ProviderSettings, RemoteStatus

    provider_type = registry.get("echo")
    settings = ProviderSettings(name="echo", type="echo", api_key="k")
    knobs = {"echo": {"task_seconds": 0, "failure_rate": 1.0}}
    async with serve(["echo"], knobs=knobs) as running:
        client = make_api_client(
            running["echo"].base_url,
            headers=provider_type.auth_headers("k"),
            timeout=5,
            max_connections=1,
        )
        async with client:
            adapter = provider_type(settings, client)
            remote_id = await adapter.submit(Job("0" * 16, "echo", None, {"prompt": "a"}))
            task = await adapter.status(remote_id)
    assert task.status is RemoteStatus.FAILED and task.error == "the echo faded"
    assert len(running["echo"].state.ledger) == 1


BROKEN = '''
from pipeline_echo import EchoProvider


class SocketEchoProvider(EchoProvider):
    """Says it completes by subscription, but has none of the subscription hooks."""

    type = "socket-echo"
    completion_modes = ("subscription", "poll")
'''


def test_a_plugin_listing_a_mode_it_cannot_back_is_refused_on_loading(
    installed_plugin: Path,
) -> None:
    (installed_plugin / "pipeline_socket_echo.py").write_text(BROKEN)
    dist = installed_plugin / "pipeline_socket_echo-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: socket-echo\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pipeline.providers]\nsocket-echo = pipeline_socket_echo:SocketEchoProvider\n"
    )
    try:
        with pytest.raises(PluginError) as refused:
            registry.available()
        listing = run_cli(
            "providers", cwd=installed_plugin, env={"PYTHONPATH": f"{installed_plugin}:{PLUGIN}"}
        )
    finally:
        sys.modules.pop("pipeline_socket_echo", None)
    message = str(refused.value)
    assert "SocketEchoProvider ('socket-echo')" in message
    assert "'subscription'" in message and "SubscriptionCapable" in message
    assert "ws_url" in message and "task_update" in message
    assert "pipeline_socket_echo:SocketEchoProvider" in message
    assert listing.returncode == 2 and "Traceback" not in listing.stderr, listing.stderr
    assert "provider plugin 'socket-echo'" in listing.stderr
    assert "pip uninstall socket-echo" in listing.stderr
