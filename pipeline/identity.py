"""Who a job is, and where its files go.

Job identity (contract 1 in docs/architecture.md)
-------------------------------------------------
A job's id is ``job_id(provider, model, params, replicate)``: the first 16 hex digits of
the SHA-256 of the canonical JSON (see ``canonical_json``) of::

    {"v": 1, "provider": ..., "model": ..., "params": ..., "replicate": ...}

``params`` are the final request parameters (prompt included). Because the JSON is
canonical, the id depends only on *what is sent*: reordering keys in the YAML, moving a
parameter from ``providers.x.params`` into the matrix, or writing ``1.0`` for ``1`` changes
no id; editing a spec adds only the cells that are new, and identical cells are one job.
The ``"v": 1`` tag is part of the hash so the scheme can change later without ever
reusing an id. Changing anything here invalidates every manifest: don't.

Output paths
------------
``render_output_path`` fills the ``output.path`` template from ``OUTPUT_FIELDS`` and
sanitises every path component, so nothing a prompt or parameter contains can place a
file outside the output root (``resolve_inside`` checks that once more).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import string
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.models import Job

__all__ = [
    "OUTPUT_FIELDS",
    "canonical_json",
    "check_path_template",
    "job_id",
    "render_output_path",
    "resolve_inside",
    "slugify",
]

ID_SCHEME_VERSION = 1
ID_HEX_DIGITS = 16

OUTPUT_FIELDS = frozenset(
    {"provider", "model", "prompt_slug", "job_id", "index", "replicate", "seed", "ext", "name"}
)
"""The fields an ``output.path`` template may use."""

REQUIRED_OUTPUT_FIELDS = ("job_id", "index")
MAX_COMPONENT_CHARS = 120
MAX_COMPONENT_BYTES = 240  # UTF-8; file systems allow 255
MAX_FIELD_CHARS = 60
ABSENT = "none"  # what a missing model or seed renders as

_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, bidi, surrogates
_SLUG_JUNK = re.compile(r"[^a-z0-9]+")


# --- identity -----------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """One JSON text per value: sorted keys, no spaces, UTF-8 kept, ``2.0`` written ``2``.

    Raises ValueError for NaN/infinity and TypeError for values JSON cannot hold
    (non-string keys, sets, bytes, dates…).
    """
    return json.dumps(
        _normalised(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


_PASS_THROUGH = frozenset({str, int, bool, type(None)})


def _normalised(obj: Any) -> Any:
    if type(obj) in _PASS_THROUGH:  # the common case, checked first: this runs per job
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{obj!r} has no JSON representation")
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        return {_json_key(key): _normalised(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_normalised(item) for item in obj]
    if isinstance(obj, str | int):  # subclasses (enums…): as their plain value
        return str(obj) if isinstance(obj, str) else int(obj)
    raise TypeError(f"{type(obj).__name__} value {obj!r} has no JSON representation")


def _json_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"mapping key {key!r} is not a string")
    return key


def job_id(provider: str, model: str | None, params: Mapping[str, Any], replicate: int) -> str:
    """The id of the job that sends ``params`` to ``provider``/``model``.

    CONTRACT: ``sha256(canonical_json({"v": 1, "provider", "model", "params",
    "replicate"}))[:16]`` in hex. Key order and number spelling (``1`` vs ``1.0``) do not
    matter; any change to what is sent does. Editing a spec therefore only adds ids for
    the new cells, and ids already in a manifest stay valid. See the module docstring.
    """
    identity = {
        "v": ID_SCHEME_VERSION,
        "provider": provider,
        "model": model,
        "params": params,
        "replicate": replicate,
    }
    digest = hashlib.sha256(canonical_json(identity).encode("utf-8")).hexdigest()
    return digest[:ID_HEX_DIGITS]


def slugify(text: str, max_len: int = 60) -> str:
    """``"Ein Fuchs im Schnee!"`` → ``"ein-fuchs-im-schnee"``: ASCII, ``[a-z0-9-]``, never empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _SLUG_JUNK.sub("-", ascii_text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "prompt"


# --- output paths -------------------------------------------------------------------


def check_path_template(template: str) -> None:
    """Raise ValueError, saying what is wrong, unless ``template`` is a usable output path."""
    fields = _template_fields(template)
    unknown = sorted(fields - OUTPUT_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(OUTPUT_FIELDS))
        raise ValueError(f"unknown field {{{unknown[0]}}}; allowed fields: {allowed}")
    missing = [name for name in REQUIRED_OUTPUT_FIELDS if name not in fields]
    if missing:
        raise ValueError(
            f"the template must contain {{{missing[0]}}} so that no two outputs share a path"
        )
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ValueError("the template must be a relative path (it is placed under output.root)")
    _check_sample_rendering(template)


def _template_fields(template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template syntax: {exc} (write {{{{ and }}}} for braces)") from exc
    fields: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"bad field {{{name}}}: use plain names like {{job_id}}")
        if conversion is not None or spec:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"field {{{written[:40]}}}: output fields take no format specs, conversions "
                f"or widths; write {{{name}}}. Allowed fields: {', '.join(sorted(OUTPUT_FIELDS))}"
            )
        fields.add(name)
    return fields


def _check_sample_rendering(template: str) -> None:
    sample = {name: "x" for name in OUTPUT_FIELDS} | {"index": 0, "replicate": 0, "seed": 0}
    rendered = _fill(template, sample)
    for component in rendered.split("/"):
        if component in ("", ".", ".."):
            raise ValueError(f"path component {component!r} is not allowed (empty, '.' or '..')")


def _fill(template: str, values: Mapping[str, Any]) -> str:
    pieces: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        pieces.append(literal)
        if name is not None:  # a checked template has no format specs: plain text only
            pieces.append(ABSENT if values[name] is None else str(values[name]))
    return "".join(pieces)


def render_output_path(
    template: str, job: Job, *, index: int, ext: str, spec_name: str
) -> PurePosixPath:
    """The relative path of output ``index`` of ``job``; every component sanitised.

    Field values cannot add directories (``/`` in a value becomes ``_``); ``..``, control
    characters, backslashes and Windows-reserved names are neutralised; components are
    capped at 120 characters (a hash of the full component keeps capped names distinct).
    """
    values: dict[str, Any] = {
        "provider": _field_text(job.provider),
        "model": _field_text(job.model),
        "prompt_slug": _field_text(job.prompt_slug or slugify(job.prompt)),
        "job_id": job.id,
        "index": index,
        "replicate": job.replicate,
        "seed": _seed_value(job.params.get("seed")),
        "ext": _clean_ext(ext),
        "name": _field_text(spec_name),
    }
    rendered = _fill(template, values)
    components = [_clean_component(part) for part in rendered.split("/") if part]
    return PurePosixPath(*(components or ["_"]))


def _field_text(value: str | None) -> str | None:
    if value is None:
        return None
    return _UNSAFE_CHARS.sub("_", value)[:MAX_FIELD_CHARS]


def _seed_value(seed: Any) -> Any:
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    return _field_text(str(seed))


def _clean_ext(ext: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]", "", ext.lower())[:16]
    return cleaned or "bin"


def _clean_component(component: str) -> str:
    cleaned = _UNSAFE_CHARS.sub("_", component)
    if not cleaned.isascii():  # ASCII is NFC already, and _UNSAFE_CHARS covers its controls
        cleaned = "".join(
            "_" if unicodedata.category(char) in _UNSAFE_CATEGORIES else char
            for char in _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", cleaned))
        )
    cleaned = cleaned.strip(" ").rstrip(". ")
    if cleaned in ("", ".", ".."):
        return "_"
    if cleaned.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return _capped(cleaned)


def _capped(component: str) -> str:
    if _fits(component):
        return component
    stem, dot, suffix = component.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = component, ""
    tag = "~" + hashlib.sha256(component.encode("utf-8")).hexdigest()[:8]
    tail = tag + ("." + suffix if suffix else "")
    while stem and not _fits(stem + tail):
        stem = stem[:-1]
    return stem + tail


def _fits(component: str) -> bool:
    return (
        len(component) <= MAX_COMPONENT_CHARS
        and len(component.encode("utf-8")) <= MAX_COMPONENT_BYTES
    )


def resolve_inside(root: Path, rel: PurePosixPath) -> Path:
    """``root / rel``, after checking (lexically) that it lies strictly inside ``root``.

    Raises ValueError otherwise. Symlinks are not followed: the check is about what the
    template produced, not about links the user placed in the tree.
    """
    root_abs = os.path.normpath(os.path.abspath(root))
    candidate = os.path.normpath(os.path.join(root_abs, rel))
    inside = candidate.startswith(root_abs.rstrip(os.sep) + os.sep)
    if rel.is_absolute() or not inside:
        raise ValueError(f"output path {str(rel)!r} is not inside {root_abs!r}")
    return Path(candidate)
