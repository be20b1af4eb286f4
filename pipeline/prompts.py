"""Prompt sources → prompts: templates, and prompt files read as streams.

A prompt file is opened only when its prompts are wanted and read one line at a time,
so a file of a million prompts costs no memory; a line longer than ``MAX_LINE_CHARS``
(or a JSONL value nested deeper than ``MAX_JSON_DEPTH``) is refused, never read whole.
Problems inside a file are SpecErrors naming the prompt file and its line.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

from pipeline.errors import SpecError
from pipeline.models import PlainPrompt, PromptFile, PromptSource, TemplatePrompt

__all__ = [
    "META_KEY",
    "Prompt",
    "iter_prompts",
    "meta_value_problem",
    "read_csv_header",
    "render_template",
    "template_fields",
]

_ENCODING = "utf-8-sig"  # tolerate the byte-order mark spreadsheet programs write
MAX_LINE_CHARS = 1_000_000
MAX_JSON_DEPTH = 64


META_KEY = "meta"
"""The key of a JSONL line's metadata object."""

_NO_META: Mapping[str, Any] = MappingProxyType({})


class Prompt(NamedTuple):
    """One prompt, the parameters its source gives it (template/jsonl ``params``) and its
    metadata (never sent to a provider)."""

    text: str
    params: Mapping[str, Any]
    meta: Mapping[str, Any] = _NO_META


def meta_value_problem(key: object, value: object) -> str | None:
    """Why ``key: value`` cannot be metadata, or None: keys are text, values scalars."""
    if not isinstance(key, str) or not key:
        return f"metadata key {key!r} must be non-empty text"
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float) and math.isfinite(value):
        return None
    return (
        f"metadata {key!r} must be a str, int, float, bool or null (a finite scalar), "
        f"not {type(value).__name__}"
    )


# --- templates ------------------------------------------------------------------------


def template_fields(text: str) -> list[str]:
    """The ``{name}`` fields of a prompt template, in order. ValueError if malformed."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc} (write {{{{ and }}}} for literal braces)") from exc
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"bad template field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}: use {{variable}}, and {{{{ }}}} for braces"
            )
        if name not in fields:
            fields.append(name)
    return fields


def render_template(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with each ``{name}`` replaced by ``values[name]`` (checked beforehand)."""
    pieces: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        pieces.append(literal)
        if name is not None:
            pieces.append(_scalar_text(values[name]))
    return "".join(pieces)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- sources --------------------------------------------------------------------------


def iter_prompts(source: PromptSource) -> Iterator[Prompt]:
    """Every prompt of one ``prompts:`` item, lazily, in file/product order."""
    if isinstance(source, PlainPrompt):
        yield Prompt(source.text, {})
    elif isinstance(source, TemplatePrompt):
        yield from _template_prompts(source)
    elif source.format == "csv":
        yield from _csv_prompts(source)
    elif source.format == "jsonl":
        yield from _jsonl_prompts(source)
    else:
        yield from _txt_prompts(source)


def _template_prompts(source: TemplatePrompt) -> Iterator[Prompt]:
    names = list(source.vars)
    for combination in itertools.product(*(source.vars[name] for name in names)):
        values = dict(zip(names, combination, strict=True))
        labels = {name: value for name, value in values.items() if _is_scalar(value)}
        yield Prompt(render_template(source.text, values), source.params, {**labels, **source.meta})


def _is_scalar(value: Any) -> bool:
    """A template variable's value that can be metadata as it is (lists and maps cannot)."""
    return value is None or isinstance(value, str | int | float | bool)


def _txt_prompts(source: PromptFile) -> Iterator[Prompt]:
    for _lineno, line in _numbered_lines(source):
        text = line.strip()
        if text and not text.startswith("#"):
            yield Prompt(text, source.params, _NO_META)


def _jsonl_prompts(source: PromptFile) -> Iterator[Prompt]:
    for lineno, line in _numbered_lines(source):
        if line.strip():
            yield _jsonl_prompt(source, lineno, line)


def _jsonl_prompt(source: PromptFile, lineno: int, line: str) -> Prompt:
    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except ValueError as exc:
        _fail(source, lineno, f"not valid JSON: {exc}")
    except RecursionError:
        record = None
    if record is None or _too_deep(record):
        _fail(source, lineno, f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(record, dict):
        _fail(source, lineno, 'each line must be a JSON object like {"prompt": "..."}')
    text = record.pop("prompt", None)
    if not isinstance(text, str) or not text.strip():
        _fail(source, lineno, 'the object needs a non-empty string "prompt"')
    meta = _jsonl_meta(source, lineno, record)
    return Prompt(text, {**source.params, **record}, meta)


def _jsonl_meta(source: PromptFile, lineno: int, record: dict[str, Any]) -> Mapping[str, Any]:
    """Take the line's metadata out of ``record``: the declared keys, then its ``meta``."""
    meta = {key: record.pop(key) for key in source.meta if key in record}
    inline = record.pop(META_KEY, None)
    if inline is not None and not isinstance(inline, dict):
        _fail(source, lineno, f'"{META_KEY}" must be an object of metadata, like {{"id": 7}}')
    meta.update(inline or {})
    for key, value in meta.items():
        problem = meta_value_problem(key, value)
        if problem:
            _fail(source, lineno, problem)
    return meta or _NO_META


def _too_deep(value: Any) -> bool:
    level: list[Any] = [value]
    for _depth in range(MAX_JSON_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _csv_prompts(source: PromptFile) -> Iterator[Prompt]:
    reader = csv.reader(line for _lineno, line in _numbered_lines(source))
    header: list[str] | None = None
    try:
        for row in reader:
            if header is None:
                header = [name.strip() for name in row]
            elif any(cell.strip() for cell in row):
                prompt = _csv_row_prompt(source, header, row, reader.line_num)
                if prompt.text.strip():
                    yield prompt
    except csv.Error as exc:
        _fail(source, reader.line_num, f"bad CSV: {exc}")


def _csv_row_prompt(source: PromptFile, header: list[str], row: list[str], lineno: int) -> Prompt:
    if len(row) != len(header):
        _fail(source, lineno, f"the row has {len(row)} fields but the header has {len(header)}")
    values = dict(zip(header, row, strict=True))
    meta = {key: values[key].strip() for key in source.meta} if source.meta else _NO_META
    if source.text is not None:
        return Prompt(render_template(source.text, values), source.params, meta)
    return Prompt(values[source.column].strip(), source.params, meta)


def read_csv_header(source: PromptFile) -> list[str]:
    """The column names of a CSV prompt file (its first row); SpecError if unreadable."""
    reader = csv.reader(line for _lineno, line in _numbered_lines(source))
    try:
        first = next(reader, None)
    except csv.Error as exc:
        _fail(source, reader.line_num, f"bad CSV header: {exc}")
    if not first:
        _fail(source, 1, "the CSV file has no header row")
    return [name.strip() for name in first]


def _numbered_lines(source: PromptFile) -> Iterator[tuple[int, str]]:
    lineno = 0
    try:
        with source.path.open(encoding=_ENCODING, newline="") as handle:
            for lineno, line in enumerate(iter(lambda: handle.readline(MAX_LINE_CHARS + 1), ""), 1):
                if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                    _fail(source, lineno, f"the line is longer than {MAX_LINE_CHARS:,} characters")
                yield lineno, line
    except UnicodeDecodeError:
        _fail(source, lineno + 1, "the file is not UTF-8 text")
    except OSError as exc:
        _fail(source, None, f"cannot read prompt file: {exc.strerror or exc}")


def _fail(source: PromptFile, lineno: int | None, message: str) -> NoReturn:
    raise SpecError(
        message, file=_display(source.path), line=lineno, path=f"prompts[{source.index}]"
    )


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
