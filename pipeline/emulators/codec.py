"""Tasks, media specs and charges as JSON-ready documents, and back (for ``persist``).

A media spec is enough to serve the same file again: rendering is deterministic.
A task's ``extra`` is its emulator's record dataclass; restoring it needs that class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.emulators.ledger import Charge
from pipeline.emulators.render import GridImage, ImageSpec, Media
from pipeline.emulators.tasks import Task, Timeline
from pipeline.emulators.video import VideoSpec

__all__ = [
    "charge_doc",
    "charge_from_doc",
    "media_doc",
    "media_from_doc",
    "task_doc",
    "task_from_doc",
]

_DRAWN: dict[str, type[ImageSpec] | type[VideoSpec]] = {"image": ImageSpec, "video": VideoSpec}


def media_doc(media: Media) -> dict[str, Any]:
    """The spec of a stored output: what it shows, not its bytes."""
    if isinstance(media, GridImage):
        cells = [media_doc(cell) for cell in media.cells]
        return {"kind": "grid", "cells": cells, "width": media.width, "height": media.height}
    for kind, cls in _DRAWN.items():
        if isinstance(media, cls):
            return {"kind": kind, **dataclasses.asdict(media)}
    raise TypeError(f"no document form for media {type(media).__name__}")


def media_from_doc(doc: dict[str, Any]) -> Media:
    fields = dict(doc)
    kind = fields.pop("kind")
    if kind == "grid":
        cells = tuple(_image(cell) for cell in fields["cells"])
        return GridImage(cells, fields["width"], fields["height"])
    cls = _DRAWN[kind]
    return cls(**{**fields, "details": tuple(fields.get("details", ()))})


def _image(doc: dict[str, Any]) -> ImageSpec:
    image = media_from_doc(doc)
    assert isinstance(image, ImageSpec)
    return image


def task_doc(task: Task) -> dict[str, Any]:
    extra = task.extra
    return {
        "id": task.id,
        "owner": task.owner,
        "timeline": dataclasses.asdict(task.timeline),
        "params": task.params,
        "media": task.media,
        "failure": None if task.failure is None else list(task.failure),
        "extra": None if extra is None else dataclasses.asdict(extra),
    }


def task_from_doc(doc: dict[str, Any], record_type: type[Any] | None) -> Task:
    """The task ``task_doc`` described; ``record_type`` rebuilds its ``extra``."""
    extra = doc["extra"]
    if extra is not None and record_type is not None:
        extra = record_type(**extra)
    failure = doc["failure"]
    return Task(
        id=doc["id"],
        owner=doc["owner"],
        timeline=Timeline(**doc["timeline"]),
        params=doc["params"],
        media=doc["media"],
        failure=None if failure is None else (str(failure[0]), str(failure[1])),
        extra=extra,
    )


def charge_doc(charge: Charge) -> dict[str, Any]:
    return charge.to_dict()


def charge_from_doc(doc: dict[str, Any]) -> Charge:
    return Charge(**doc)
