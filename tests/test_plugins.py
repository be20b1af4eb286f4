"""Third-party providers are found through the `pipeline.providers` entry point group.

The test installs the example plugin the way pip would leave it (a dist-info folder with
entry_points.txt on sys.path), so the real importlib.metadata discovery is exercised."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.providers import registry

from .conftest import run_cli

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dist = tmp_path / "pipeline_echo-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pipeline-echo\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pipeline.providers]\necho = pipeline_echo:EchoProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN))
    registry.available.cache_clear()
    yield tmp_path
    registry.available.cache_clear()
    sys.modules.pop("pipeline_echo", None)


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
        with pytest.raises(TypeError) as refused:
            registry.available()
    finally:
        sys.modules.pop("pipeline_socket_echo", None)
    message = str(refused.value)
    assert "SocketEchoProvider ('socket-echo')" in message
    assert "'subscription'" in message and "SubscriptionCapable" in message
    assert "ws_url" in message and "task_update" in message
