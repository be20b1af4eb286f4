"""Where provider adapters are found: the built-ins plus the ``pipeline.providers`` entry
point group, so a third-party package can add an API without touching pipeline.

A plugin declares, in its own pyproject.toml::

    [project.entry-points."pipeline.providers"]
    myapi = "my_package.adapter:MyApiProvider"

where ``MyApiProvider`` subclasses ``pipeline.providers.base.Provider``.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points

from pipeline.errors import PluginError
from pipeline.providers.acedata import AceDataPixverseProvider
from pipeline.providers.apixo import ApixoProvider
from pipeline.providers.base import Provider
from pipeline.providers.pixai import PixAIProvider
from pipeline.providers.pixellabs import PixelLabsProvider

__all__ = ["BUILTIN", "available", "get"]

BUILTIN: dict[str, type[Provider]] = {
    PixelLabsProvider.type: PixelLabsProvider,
    ApixoProvider.type: ApixoProvider,
    AceDataPixverseProvider.type: AceDataPixverseProvider,
    PixAIProvider.type: PixAIProvider,
}


@functools.cache
def available() -> dict[str, type[Provider]]:
    """Every provider type: built-ins first, then plugins (which cannot shadow them)."""
    found = dict(BUILTIN)
    for entry in entry_points(group="pipeline.providers"):
        if entry.name in found:
            continue
        loaded = _load(entry)
        if isinstance(loaded, type) and issubclass(loaded, Provider):
            found[entry.name] = loaded
    return found


def _load(entry: EntryPoint) -> object:
    """A plugin's provider class; any failure to load it is a PluginError that names the
    plugin and its package, never a traceback."""
    try:
        return entry.load()
    except Exception as exc:
        package = entry.dist.name if entry.dist is not None else None
        fix = f"pip uninstall {package}" if package else "uninstall its package"
        raise PluginError(
            f"provider plugin {entry.name!r} ({entry.value}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}\n  fix the plugin, or remove it: {fix}"
        ) from exc


def get(type_name: str) -> type[Provider]:
    return available()[type_name]
