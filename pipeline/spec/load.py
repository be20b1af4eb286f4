"""YAML spec file → validated ``models.Spec``, or a SpecError that says where and why.

Loading goes: YAML (with the line of every key, ``spec.source``) → ``${VAR}`` expansion →
structural validation (pydantic models in ``spec.schema``) → meaning checks and
conversion to frozen dataclasses (here). Every user mistake becomes a
``SpecError(message, file=, line=, path=, hint=)``; nothing escapes as a traceback.

Run ``python -m pipeline.spec.load > pipeline/schema.json`` to regenerate the JSON Schema
(shipped in the wheel: ``pipeline schema`` prints it).
"""

from __future__ import annotations

import json
import os
from collections import ChainMap
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import SpecError
from pipeline.models import Spec
from pipeline.spec.convert import build_spec
from pipeline.spec.schema import UNION_TAGS, SpecModel
from pipeline.spec.source import FieldPath, ParsedYaml, expand_env, parse_yaml
from pipeline.units import parse_duration, parse_rate

__all__ = ["load_spec", "parse_duration", "parse_rate", "spec_json_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load_spec(
    path: Path,
    *,
    known_providers: Collection[str],
    env: Mapping[str, str] | None = None,
    content: str | Mapping[str, Any] | None = None,
) -> Spec:
    """Load and check the spec at ``path``; ``known_providers`` are the API types there
    are adapters for; ``${VAR}`` comes from ``env`` (default: ``os.environ``).

    ``content`` (YAML text, or the parsed data) is the spec when it is not read from
    ``path``, which then only names it (relative files, errors, the folder's owner)."""
    file = str(path)
    parsed = _parse(path, file, content)
    if not isinstance(parsed.data, dict):
        raise parsed.error(
            "a spec is a mapping with at least `providers:` and `prompts:`",
            (),
            "see specs/quickstart.yaml for a small example",
        )
    data = expand_env(parsed, with_spec_dir(os.environ if env is None else env, path))
    try:
        model = SpecModel.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, parsed) from None
    return build_spec(model, parsed, source=path, known_providers=known_providers)


SPEC_DIR = "SPEC_DIR"
"""``${SPEC_DIR}`` in a spec: the absolute folder of the spec file (``root: ${SPEC_DIR}/out``
ties the outputs to the spec wherever a command runs from)."""


def with_spec_dir(env: Mapping[str, str], path: Path) -> Mapping[str, str]:
    return ChainMap({SPEC_DIR: str(Path(path).absolute().parent)}, dict(env))


def _parse(path: Path, file: str, content: str | Mapping[str, Any] | None) -> ParsedYaml:
    if content is None:
        return parse_yaml(_read_text(path, file), file=file)
    if isinstance(content, str):
        return parse_yaml(content, file=file)
    return ParsedYaml(file, dict(content), {})  # no lines to point at


def _read_text(path: Path, file: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("the spec is not UTF-8 text", file=file) from exc
    except OSError as exc:
        raise SpecError(f"cannot read the spec: {exc.strerror or exc}", file=file) from exc


# --- pydantic errors → SpecError --------------------------------------------------------

_EXPECTED = {
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "text",
    "bool_type": "true or false",
}


def _spec_error(exc: ValidationError, parsed: ParsedYaml) -> SpecError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field_path = _field_path(first)
    others = {tuple(_field_path(error)) for error in errors} - {field_path}
    message = _message(first)
    if others:
        message += f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})"
    return parsed.error(message, field_path)


def _field_path(error: ErrorDetails) -> FieldPath:
    parts: list[str | int] = [
        part for part in error["loc"] if part not in UNION_TAGS and part != "[key]"
    ]
    if error["type"] == "unknown_key":
        parts.append(str((error.get("ctx") or {})["key"]))
    return tuple(parts)


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if "[key]" in error["loc"]:
        return "keys here must be text"
    if kind == "missing":
        return "this field is required"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_kind_of(error.get('input'))}"
    return str(error["msg"])


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    kinds = {int: "a whole number", float: "a number", str: "text", list: "a list"}
    return kinds.get(type(value), "a mapping" if isinstance(value, dict) else "something else")


# --- JSON Schema ----------------------------------------------------------------------


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of spec files (for editors, and as field documentation)."""
    schema = SpecModel.model_json_schema(mode="validation")
    provider_name = {"pattern": "^[a-z0-9_-]+$"}
    schema["properties"]["providers"]["propertyNames"] = provider_name
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def _schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(_schema_text(), end="")
