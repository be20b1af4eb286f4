"""Third-party providers are found through the `pipeline.providers` entry point group.

The test installs the example plugin the way pip would leave it (a dist-info folder with
entry_points.txt on sys.path), so the real importlib.metadata discovery is exercised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import PluginError
from pipeline.providers import registry

from .conftest import PYTHON, run_cli, write_spec

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


def test_a_plugin_listing_a_mode_it_cannot_back_is_refused_when_used(
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
        assert "socket-echo" not in registry.available()  # the others stay usable
        assert "echo" in registry.available()
        with pytest.raises(PluginError) as refused:
            registry.get("socket-echo")
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
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    assert "echo — Echo (example plugin)" in listing.stdout
    warning = _lines_naming(listing.stderr, "socket-echo")
    assert len(warning) == 1 and warning[0].startswith("warning: provider plugin 'socket-echo'")
    assert "pip uninstall socket-echo" in warning[0]


# --- a plugin that cannot be loaded fails only what needs it ---------------------------

BROKEN_ENTRIES = (
    "[pipeline.providers]\nbroken = pipeline_broken:BrokenProvider\n"
    "[pipeline.emulators]\nbroken = pipeline_broken:create_app\n"
)
BUILTIN_ONLY = """
name: plain
providers:
  pixellabs:
    emulate: {{task_seconds: 0.1}}
prompts: [a kite]
output: {{root: {root}}}
"""
USES_BROKEN = """
name: uses
providers:
  broken: {{api_key: k}}
prompts: [a kite]
output: {{root: {root}}}
"""


@pytest.fixture
def broken_plugin(tmp_path: Path) -> Path:
    """A plugin, installed as pip leaves it, whose module fails to import (a dependency
    it needs is missing); returns the folder to put on PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "pipeline_broken.py").write_text("import pipeline_broken_missing_dependency\n")
    dist = site / "pipeline_broken-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(BROKEN_ENTRIES)
    return site


def _lines_naming(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"'{name}'" in line]


def _one_warning(result: subprocess.CompletedProcess[str], kind: str = "provider") -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = _lines_naming(result.stderr, "broken")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"warning: {kind} plugin 'broken' (pipeline_broken:")
    assert "ModuleNotFoundError" in lines[0] and "pip uninstall broken-plugin" in lines[0]


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_broken_plugin_does_not_stop_a_spec_that_does_not_use_it(
    broken_plugin: Path, tmp_path: Path, command: str
) -> None:
    spec = write_spec(tmp_path, BUILTIN_ONLY.format(root=tmp_path / "out"))
    env = {"PYTHONPATH": str(broken_plugin)}
    result = run_cli(command, str(spec), cwd=tmp_path, env=env)
    _one_warning(result)
    if command == "run":
        status = run_cli("status", str(spec), cwd=tmp_path, env=env)
        _one_warning(status)
        assert "done" in status.stdout


def test_a_broken_plugin_is_a_warning_in_the_provider_listing(
    broken_plugin: Path, tmp_path: Path
) -> None:
    result = run_cli("providers", cwd=tmp_path, env={"PYTHONPATH": str(broken_plugin)})
    _one_warning(result)
    assert "pixellabs — " in result.stdout


def test_a_spec_using_a_broken_plugin_gets_its_error(broken_plugin: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, USES_BROKEN.format(root=tmp_path / "out"))
    for command in ("validate", "plan", "run"):
        result = run_cli(command, str(spec), cwd=tmp_path, env={"PYTHONPATH": str(broken_plugin)})
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines = _lines_naming(result.stderr, "broken")
        assert len(lines) == 1, result.stderr  # the error, not a warning besides it
        assert lines[0].startswith(
            "error: provider plugin 'broken' (pipeline_broken:BrokenProvider) cannot be "
            "loaded: ModuleNotFoundError: No module named 'pipeline_broken_missing_dependency'"
        )
        assert "fix the plugin, or remove it: pip uninstall broken-plugin" in result.stderr
    assert not (tmp_path / "out").exists()


def test_emulate_serves_the_others_and_refuses_a_broken_one_asked_for(
    broken_plugin: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(broken_plugin)}
    process = subprocess.Popen(
        [PYTHON, "-m", "pipeline", "emulate"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        served = [process.stdout.readline().split()[0] for _ in range(4)]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert sorted(served) == ["acedata", "apixo", "pixai", "pixellabs"]
    _one_warning(subprocess.CompletedProcess([], 0, "", stderr), kind="emulator")

    asked = run_cli("emulate", "--provider", "broken", cwd=tmp_path, env=env)
    assert asked.returncode == 2, asked.stdout + asked.stderr
    assert "Traceback" not in asked.stderr
    assert "error: emulator plugin 'broken' (pipeline_broken:create_app) cannot be loaded: " in (
        asked.stderr
    )
    assert "pip uninstall broken-plugin" in asked.stderr


def test_an_entry_point_that_is_not_a_provider_is_refused_when_used(
    installed_plugin: Path,
) -> None:
    dist = installed_plugin / "pipeline_odd-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: odd-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pipeline.providers]\nodd = pipeline_echo.emulator:create_app\n"
    )
    registry.available.cache_clear()
    assert "odd" not in registry.available() and "echo" in registry.available()
    with pytest.raises(
        PluginError, match=r"'odd' \(pipeline_echo.emulator:create_app\).*not a Provider"
    ):
        registry.get("odd")


@pytest.fixture
def plugin_with_broken_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from install(
        tmp_path,
        monkeypatch,
        PROVIDER_ENTRY + "[pipeline.emulators]\necho = pipeline_echo_missing:create_app\n",
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_emulating_with_a_broken_emulator_plugin_is_its_error(
    plugin_with_broken_emulator: Path, tmp_path: Path, command: str
) -> None:
    env = {"PYTHONPATH": f"{plugin_with_broken_emulator}:{PLUGIN}"}
    result = run_cli(command, str(echo_spec(tmp_path, "true")), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: emulator plugin 'echo' (pipeline_echo_missing:create_app) cannot be" in (
        result.stderr
    )
    assert "pip uninstall pipeline-echo" in result.stderr
    assert not (tmp_path / "out").exists()
