"""Which emulators exist: name → application factory, built-in or from a plugin.

A plugin gives its provider an emulator under the ``pipeline.emulators`` entry point
group, named as the provider type::

    [project.entry-points."pipeline.emulators"]
    myapi = "my_package.emulator:create_app"

where ``create_app(knobs: Knobs) -> aiohttp.web.Application`` builds its app with
``build_app`` around an ``EmulatorState``. A provider type without one cannot be emulated.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import cast

from aiohttp import web

from pipeline.emulators import apixo, pixai, pixellabs, pixverse
from pipeline.emulators.knobs import Knobs
from pipeline.errors import plugin_error

__all__ = ["EMULATORS", "GROUP", "emulator_factory", "emulator_names"]

Factory = Callable[[Knobs], web.Application]

EMULATORS: dict[str, Factory] = {
    "pixellabs": pixellabs.create_app,
    "apixo": apixo.create_app,
    "acedata": pixverse.create_app,
    "pixai": pixai.create_app,
}
"""The built-in emulators."""

GROUP = "pipeline.emulators"


def emulator_names() -> list[str]:
    """Every emulator's name, built-ins first, without loading any plugin."""
    plugins = sorted({entry.name for entry in entry_points(group=GROUP)} - set(EMULATORS))
    return [*EMULATORS, *plugins]


def emulator_factory(name: str) -> Factory:
    """The factory of emulator ``name`` (a plugin's is loaded now); KeyError if none,
    PluginError if its plugin cannot be loaded."""
    if name in EMULATORS:
        return EMULATORS[name]
    for entry in entry_points(group=GROUP, name=name):
        package = entry.dist.name if entry.dist is not None else None
        try:
            loaded = entry.load()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise plugin_error("emulator", name, entry.value, package, problem) from exc
        if not callable(loaded):
            problem = "it is not a callable create_app(knobs) -> aiohttp.web.Application"
            raise plugin_error("emulator", name, entry.value, package, problem)
        return cast(Factory, loaded)
    raise KeyError(name)
