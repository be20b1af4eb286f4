"""Where provider adapters are found: the built-ins plus the ``pipeline.providers`` entry
point group, so a third-party package can add an API without touching pipeline.

A plugin declares, in its own pyproject.toml::

    [project.entry-points."pipeline.providers"]
    myapi = "my_package.adapter:MyApiProvider"

where ``MyApiProvider`` subclasses ``pipeline.providers.base.Provider``.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points

from pipeline.errors import PluginError, PluginWarning, plugin_error
from pipeline.providers.acedata import AceDataPixverseProvider
from pipeline.providers.apixo import ApixoProvider
from pipeline.providers.base import Provider
from pipeline.providers.pixai import PixAIProvider
from pipeline.providers.pixellabs import PixelLabsProvider

__all__ = ["BUILTIN", "GROUP", "available", "get", "known", "warn_unloadable"]

BUILTIN: dict[str, type[Provider]] = {
    PixelLabsProvider.type: PixelLabsProvider,
    ApixoProvider.type: ApixoProvider,
    AceDataPixverseProvider.type: AceDataPixverseProvider,
    PixAIProvider.type: PixAIProvider,
}


GROUP = "pipeline.providers"

_broken: dict[str, PluginError] = {}
"""The plugins the last discovery could not load, by provider type."""
_warned: set[str] = set()


@functools.cache
def available() -> dict[str, type[Provider]]:
    """Every usable provider type: built-ins first, then plugins (which cannot shadow
    them). A plugin that cannot be loaded is left out; ``get`` raises its PluginError."""
    found = dict(BUILTIN)
    _broken.clear()
    _warned.clear()
    for entry in entry_points(group=GROUP):
        if entry.name in found or entry.name in _broken:
            continue
        try:
            found[entry.name] = _load(entry)
        except PluginError as exc:
            _broken[entry.name] = exc
    return found


def known() -> list[str]:
    """Every provider type a spec may name, the plugins that cannot be loaded included
    (a spec naming one gets its PluginError, not "unknown type")."""
    return [*available(), *_broken]


def get(type_name: str) -> type[Provider]:
    """The adapter class of ``type_name``; PluginError if its plugin cannot be loaded."""
    found = available()
    if type_name in _broken:
        raise _broken[type_name]
    return found[type_name]


def warn_unloadable() -> None:
    """A ``PluginWarning`` (one line) for each plugin that cannot be loaded, once per
    discovery: for commands that go on without them."""
    available()
    for name, error in _broken.items():
        if name not in _warned:
            _warned.add(name)
            warnings.warn(error.warning, PluginWarning, stacklevel=2)


def _load(entry: EntryPoint) -> type[Provider]:
    """A plugin's provider class; any failure to load it is a PluginError that names the
    plugin and its package, never a traceback."""
    package = entry.dist.name if entry.dist is not None else None
    try:
        loaded = entry.load()
    except Exception as exc:
        raise plugin_error(
            "provider", entry.name, entry.value, package, f"{type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Provider)):
        raise plugin_error(
            "provider",
            entry.name,
            entry.value,
            package,
            "it is not a Provider (a subclass of pipeline.providers.base.Provider)",
        )
    return loaded
