"""Which emulators exist: name → application factory."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from pipeline.emulators import apixo, pixai, pixellabs, pixverse
from pipeline.emulators.knobs import Knobs

__all__ = ["EMULATORS"]

EMULATORS: dict[str, Callable[[Knobs], web.Application]] = {
    "pixellabs": pixellabs.create_app,
    "apixo": apixo.create_app,
    "acedata": pixverse.create_app,
    "pixai": pixai.create_app,
}
