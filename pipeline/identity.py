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
``render_output_path`` fills the ``output.path`` template from ``OUTPUT_FIELDS``, the job's
parameters (``{style}``) and its metadata (``{meta.category}``), and sanitises every path
component, so nothing a prompt or parameter contains can place a file outside the output
root (``resolve_inside`` checks that once more).

Two outputs never share a path: ``check_path_template`` admits only templates from whose
every rendering the job id and output index can be read back. ``{job_id}`` and ``{index}``
are each a folder of their own, or sit at the end of the file name after every other
field, where only literal text, ``{job_id}``, ``{index}`` and ``{ext}`` follow, and
``{index}`` and ``{ext}`` are each preceded by a character they cannot contain. Read from
the right, that end gives the ext, the index and the 16 hex digits of the id whatever the
other fields hold; components never vanish (an empty one is ``_``), and capping a long file
name shortens only what comes before that end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import string
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from anyascii import anyascii

from pipeline.models import Job

__all__ = [
    "META_PREFIX",
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
"""The built-in fields of an ``output.path`` template; any parameter name (``{style}``)
and ``{meta.KEY}`` may be used too (a built-in wins over a parameter of its name)."""

META_PREFIX = "meta."
NOT_PATH_FIELDS = {"prompt": "the prompt goes into paths as {prompt_slug}"}
REQUIRED_OUTPUT_FIELDS = ("job_id", "index")
MAX_COMPONENT_CHARS = 120
MAX_COMPONENT_BYTES = 240  # UTF-8; file systems allow 255
MAX_FIELD_CHARS = 60
MAX_TAIL_LITERAL_CHARS = 40  # text around {job_id}/{index} at the end of the file name
ABSENT = "none"  # what a missing model, seed, parameter or metadata key renders as

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_FIELD_NAME = re.compile(rf"(?:{re.escape(META_PREFIX)})?{_NAME}")
_TAIL_ALPHABETS = {
    "job_id": "",
    "index": string.digits,
    "ext": string.ascii_lowercase + "0123456789",
}
"""Fields that may end a file name, each with the characters its value is made of (the job
id needs none: it is always 16 characters)."""
_RATIO = re.compile(r"\d+(?:\.\d+)?:\d+(?:\.\d+)?")

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
    """``"Ein Fuchs im Schnee!"`` → ``"ein-fuchs-im-schnee"``: ASCII, ``[a-z0-9-]``, never empty.

    Other scripts are transliterated (``"東京の夜景"`` → ``"dong-jingno-ye-jing"``, ``"🦊"``
    → ``"fox"``); ASCII text is never touched before slugging, so its slug stays the one
    every earlier version gave (the manifest keeps each job's slug, so a resumed run's
    paths do not move either way)."""
    ascii_text = text if text.isascii() else _NON_ASCII_RUN.sub(_transliterate, text)
    slug = _SLUG_JUNK.sub("-", ascii_text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "prompt"


_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_SYLLABLE_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _transliterate(run: re.Match[str]) -> str:
    """A run of non-ASCII text in ASCII. anyascii marks each CJK syllable with a capital
    (``DongJing``): those become words, also after an ASCII word (``Tokyo東京``)."""
    text = _SYLLABLE_START.sub(" ", anyascii(run.group()))
    before = run.string[run.start() - 1 : run.start()]
    if text[:1].isupper() and (before.islower() or before.isdigit()):
        return " " + text
    return text


# --- output paths ---------------------------------------------------------------------


class _Piece(NamedTuple):
    """A piece of one path component of a template: literal text, or a field's name."""

    text: str
    field: bool = False


@functools.lru_cache(maxsize=32)
def _components(template: str) -> tuple[tuple[_Piece, ...], ...]:
    """The template's path components (split on the ``/`` of its literal text), as pieces."""
    components: list[list[_Piece]] = [[]]
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        for position, part in enumerate(literal.split("/")):
            if position:
                components.append([])
            if part:
                components[-1].append(_Piece(part))
        if name is not None:
            components[-1].append(_Piece(name, field=True))
    return tuple(tuple(component) for component in components)


def _tail_start(pieces: tuple[_Piece, ...]) -> int:
    """Where the end of a file name made only of literals, {job_id}, {index} and {ext}
    begins; capping never shortens it."""
    start = len(pieces)
    while start and (not pieces[start - 1].field or pieces[start - 1].text in _TAIL_ALPHABETS):
        start -= 1
    return start


def check_path_template(template: str) -> frozenset[str]:
    """Raise ValueError, saying what is wrong, unless ``template`` is a usable output path;
    return the parameter and ``meta.`` fields it uses (the caller checks those names)."""
    fields = _template_fields(template)
    missing = [name for name in REQUIRED_OUTPUT_FIELDS if name not in fields]
    if missing:
        raise ValueError(
            f"the template must contain {{{missing[0]}}} so that no two outputs share a path"
        )
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ValueError("the template must be a relative path (it is placed under output.root)")
    _check_sample_rendering(template, fields)
    _check_readable_back(_components(template))
    return frozenset(fields - OUTPUT_FIELDS)


def _template_fields(template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template syntax: {exc} (write {{{{ and }}}} for braces)") from exc
    fields: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(
                f"bad field {{{name[:40]}}}: use plain names like {{job_id}}, parameters like "
                f"{{style}} and metadata like {{meta.category}}"
            )
        if conversion is not None or spec:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"field {{{written[:40]}}}: output fields take no format specs, conversions "
                f"or widths; write {{{name}}}. Allowed fields: {', '.join(sorted(OUTPUT_FIELDS))}"
                ", any parameter ({style}) and metadata ({meta.category})"
            )
        if name in NOT_PATH_FIELDS:
            raise ValueError(f"unknown field {{{name}}}: {NOT_PATH_FIELDS[name]}")
        fields.add(name)
    return fields


def _check_sample_rendering(template: str, fields: set[str]) -> None:
    sample = {name: "x" for name in fields} | {"index": 0, "replicate": 0, "seed": 0}
    rendered = _fill(template, sample.__getitem__)
    for component in rendered.split("/"):
        if component in ("", ".", ".."):
            raise ValueError(f"path component {component!r} is not allowed (empty, '.' or '..')")


def _check_readable_back(components: tuple[tuple[_Piece, ...], ...]) -> None:
    """Refuse a template from whose renderings the job id and index cannot be read back
    (see the module docstring): a template that passes never gives two outputs one path."""
    folders = {c[0].text for c in components[:-1] if len(c) == 1 and c[0].field}
    last = components[-1]
    tail = last[_tail_start(last) :]
    in_tail = {piece.text for piece in tail if piece.field}
    for position, piece in enumerate(tail):
        alphabet = _TAIL_ALPHABETS.get(piece.text, "") if piece.field else ""
        if not alphabet:
            continue
        if position == 0:
            readable = len(tail) == len(last)  # the file name starts with it
        else:
            mark = tail[position - 1]
            readable = not mark.field and mark.text[-1].isascii() and mark.text[-1] not in alphabet
        if not readable:  # this end cannot be read back: nothing in it counts
            in_tail.clear()
            break
    for name in REQUIRED_OUTPUT_FIELDS:
        if name not in folders and name not in in_tail:
            raise ValueError(
                f"{{{name}}} must be a folder of its own or come after every other field in "
                "the file name, with - _ or . before {index} and {ext} (such as "
                "{style}-{job_id}-{index}.{ext}), so that no two outputs can share a path"
            )
    literal = sum(len(piece.text) for piece in tail if not piece.field)
    if in_tail and literal > MAX_TAIL_LITERAL_CHARS:
        raise ValueError(
            f"the text around {{job_id}} and {{index}} at the end of the file name must be at "
            f"most {MAX_TAIL_LITERAL_CHARS} characters (it is never shortened)"
        )


def _fill(template: str, value_of: Any) -> str:
    pieces: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        pieces.append(literal)
        if name is not None:  # a checked template has no format specs: plain text only
            value = value_of(name)
            pieces.append(ABSENT if value is None else str(value))
    return "".join(pieces)


def render_output_path(
    template: str, job: Job, *, index: int, ext: str, spec_name: str
) -> PurePosixPath:
    """The relative path of output ``index`` of ``job``; every component sanitised.

    Field values cannot add directories (``/`` in a value becomes ``_``); ``..``, control
    characters, backslashes and Windows-reserved names are neutralised; components are
    capped at 120 characters (a hash of the full component keeps capped names distinct,
    and the end of the file name that holds the job id and index is kept whole).
    """
    builtins: dict[str, Any] = {
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

    def text(pieces: tuple[_Piece, ...]) -> str:
        return "".join(
            _field_value(piece.text, job, builtins) if piece.field else piece.text
            for piece in pieces
        )

    *folders, last = _components(template)
    start = _tail_start(last)
    components = [_clean_component(text(pieces)) for pieces in folders]
    components.append(_clean_component(text(last[:start]), text(last[start:])))
    return PurePosixPath(*components)


def _field_value(name: str, job: Job, builtins: Mapping[str, Any]) -> str:
    if name in builtins:
        value = builtins[name]
        return ABSENT if value is None else str(value)
    if name.startswith(META_PREFIX):
        return _value_text(job.meta.get(name[len(META_PREFIX) :]))
    return _value_text(job.params.get(name))


def _value_text(value: Any) -> str:
    """A parameter or metadata value as readable path text: ``16:9`` → ``16x9``, ``1.0`` →
    ``1``, ``True`` → ``true``, a list joined with ``+``; absent → ``none``."""
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value
    if isinstance(value, str) and _RATIO.fullmatch(value):
        value = value.replace(":", "x")
    elif isinstance(value, list | tuple):
        value = "+".join(_value_text(item) for item in value)
    elif isinstance(value, Mapping):
        value = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return _field_text(str(value)) or ""


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


def _clean_component(head: str, tail: str = "") -> str:
    """One safe path component from ``head + tail``; capping shortens only ``head``."""
    head, tail = _clean_text(head), _clean_text(tail)
    joined = head + tail
    cleaned = joined.strip(" ").rstrip(". ")
    keep = min(len(cleaned), max(0, len(tail) - (len(joined) - len(joined.rstrip(". ")))))
    if cleaned in ("", ".", ".."):
        return "_"
    if cleaned.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return _capped(cleaned, keep)


def _clean_text(text: str) -> str:
    cleaned = _UNSAFE_CHARS.sub("_", text)
    if not cleaned.isascii():  # ASCII is NFC already, and _UNSAFE_CHARS covers its controls
        cleaned = "".join(
            "_" if unicodedata.category(char) in _UNSAFE_CATEGORIES else char
            for char in _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", cleaned))
        )
    return cleaned


def _capped(component: str, keep: int = 0) -> str:
    """``component`` within the length caps: what comes before its last ``keep``
    characters (else before its extension) is shortened and a hash of the whole added."""
    if _fits(component):
        return component
    tag = "~" + hashlib.sha256(component.encode("utf-8")).hexdigest()[:8]
    if not keep:
        _stem, dot, suffix = component.rpartition(".")
        keep = len(suffix) + 1 if dot and len(suffix) <= 16 else 0
    if not _fits(tag + component[len(component) - keep :]):
        keep = 0  # only for a template never checked: its end is too long to keep
    stem, kept = component[: len(component) - keep], component[len(component) - keep :]
    while stem and not _fits(stem + tag + kept):
        stem = stem[:-1]
    return stem + tag + kept


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
