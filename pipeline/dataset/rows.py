"""A job record as dataset rows (one per output file), and the type of each column.

Rows are built with keyed names first (``p:seed`` for a parameter, ``m:category`` for a
metadata field, plain names for what the manifest itself records) and named once every
row has been seen (``ColumnTypes.names``): a parameter or metadata field keeps its own
name unless another column already has it. Each column then gets one type for the whole
export, since pyarrow, pandas and `datasets` all refuse a column whose type changes
from row to row: all bools, all ints, numbers (float), or else text, with lists and
mappings as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any, Literal

from pipeline.models import JobRecord
from pipeline.redact import scrub

__all__ = [
    "FIXED",
    "HEAD",
    "KIND_FOLDERS",
    "ColumnType",
    "ColumnTypes",
    "kind_of",
    "normalise",
    "record_rows",
    "safe_relative",
]

ColumnType = Literal["bool", "int", "float", "string", "null"]

KIND_FOLDERS = {"image": "images", "video": "videos", "file": "files"}
"""The folder of each kind of output in a `hf` export."""

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"})
VIDEO_EXTENSIONS = frozenset({"mp4", "mov", "mkv", "avi"})
"""Extensions `datasets`' imagefolder and videofolder builders recognise (a folder of
other files would not be taken for an image or video folder)."""

HEAD = ("file_name", "kind", "p:prompt", "provider", "model", "p:seed")
TAIL = (
    "job_id",
    "output_index",
    "replicate",
    "state",
    "sha256",
    "size",
    "content_type",
    "error",
)
FIXED = frozenset(name for name in (*HEAD, *TAIL) if ":" not in name)
"""What the manifest records, named as it is; parameters and metadata go between."""

_INT64 = 2**63
_NARROWEST_FIRST: tuple[tuple[ColumnType, frozenset[str]], ...] = (
    ("bool", frozenset({"bool"})),
    ("int", frozenset({"int"})),
    ("float", frozenset({"int", "float"})),
    ("string", frozenset({"string"})),
)
"""The column type for the value types seen: the first that holds them all (lists,
mappings and mixed columns are text)."""


def kind_of(path: str) -> str:
    """``image``, ``video`` or ``file``, by the extension a folder builder would read."""
    ext = PurePosixPath(path).suffix.lower().lstrip(".")
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return "file"


def safe_relative(path: str) -> bool:
    """A recorded output path that stays inside the output folder (never trusted blindly:
    a manifest can be rebuilt from a snapshot someone edited)."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path


def record_rows(record: JobRecord) -> Iterator[dict[str, Any]]:
    """One row per output file; a job without any (failed, still running) is one row
    without a file, so a table of failures can be exported too."""
    job = record.job
    common: dict[str, Any] = {
        "provider": job.provider,
        "model": job.model,
        **{f"p:{key}": value for key, value in job.params.items()},
        **{f"m:{key}": value for key, value in job.meta.items()},
        "job_id": job.id,
        "replicate": job.replicate,
        "state": record.state.value,
        "error": None if record.error is None else scrub(record.error),
    }
    if not record.outputs:
        nothing = dict.fromkeys(("output_index", "sha256", "size", "content_type"))
        yield {"file_name": None, "kind": None, **common, **nothing}
        return
    for output in record.outputs:
        yield {
            "file_name": output.path,
            "kind": kind_of(output.path),
            **common,
            "output_index": output.index,
            "sha256": output.sha256,
            "size": output.size,
            "content_type": output.content_type,
        }


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -_INT64 <= value < _INT64 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


class ColumnTypes:
    """What was seen of each keyed column: the types of its values, and in which scopes
    (``all``, and each kind of file) it is ever not null."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.present: dict[str, set[str]] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        scopes = ("all", row.get("kind") or "none")
        for key, value in row.items():
            types = self.seen.setdefault(key, set())
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            types.add(_type_of(value))
            self.present.setdefault(key, set()).update(scopes)

    def type_of(self, key: str) -> ColumnType:
        types = self.seen.get(key, set())
        if not types:
            return "null"
        for name, allowed in _NARROWEST_FIRST:
            if types <= allowed:
                return name
        return "string"

    def names(self) -> dict[str, str]:
        """Keyed column → its name in the export, in the export's column order."""
        params = sorted(k for k in self.seen if k.startswith("p:") and k not in HEAD)
        meta = sorted(k for k in self.seen if k.startswith("m:"))
        order = [*HEAD, *params, *meta, *TAIL]
        taken = set(FIXED)
        named: dict[str, str] = {}
        for key in order:
            if key not in self.seen:
                continue
            name = key.partition(":")[2] if ":" in key else key
            if ":" in key and name in taken:
                name = ("param_" if key.startswith("p:") else "meta_") + name
            taken.add(name)
            named[key] = name
        return named

    def present_in(self, key: str, scope: str) -> bool:
        return scope in self.present.get(key, set())


def normalise(value: Any, kind: ColumnType) -> Any:
    """``value`` as a value of a column of type ``kind`` (None stays None)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if kind == "float":
        return float(value)
    if kind == "string" and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


def ordered(named: Mapping[str, str], columns: Iterable[str] | None) -> list[str]:
    """The keyed columns to write, in order: ``columns`` (export names) when given."""
    if columns is None:
        return list(named)
    by_name = {name: key for key, name in named.items()}
    return [by_name[name] for name in columns]
