"""YAML spec file → validated ``models.Spec``, or a SpecError that says where and why.

Loading goes: YAML (with the line of every key, ``spec.source``) → ``${VAR}`` expansion →
structural validation (pydantic models in ``spec.schema``) → meaning checks and
conversion to frozen dataclasses (here). Every user mistake becomes a
``SpecError(message, file=, line=, path=, hint=)``; nothing escapes as a traceback.

Run ``python -m pipeline.spec.load > pipeline/schema.json`` to regenerate the JSON Schema
(shipped in the wheel: ``pipeline schema`` prints it).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import ChainMap
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import SpecError
from pipeline.models import Spec
from pipeline.spec.convert import build_spec
from pipeline.spec.schema import UNION_TAGS, SpecModel
from pipeline.spec.source import FieldPath, ParsedYaml, combined, expand_env, parse_yaml
from pipeline.units import parse_duration, parse_rate

__all__ = ["JOB_SHAPING", "load_spec", "parse_duration", "parse_rate", "spec_json_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load_spec(
    path: Path,
    *,
    known_providers: Collection[str],
    env: Mapping[str, str] | None = None,
    content: str | Mapping[str, Any] | None = None,
    require_env: bool = True,
) -> Spec:
    """Load and check the spec at ``path``; ``known_providers`` are the API types there
    are adapters for; ``${VAR}`` comes from ``env`` (default: ``os.environ``).

    ``content`` (YAML text, or the parsed data) is the spec when it is not read from
    ``path``, which then only names it (relative files, errors, the folder's owner).
    ``require_env=False`` is for dry runs: an unset variable stays as written and is
    listed in ``Spec.unset_env``, unless it shapes the jobs (``JOB_SHAPING``)."""
    file = str(path)
    parsed = _parse(path, file, content)
    if not isinstance(parsed.data, dict):
        raise parsed.error(
            "a spec is a mapping with at least `providers:` and `prompts:`",
            (),
            "`pipeline init` writes a small example spec to start from",
        )
    unset: dict[str, list[FieldPath]] | None = None if require_env else {}
    data = expand_env(parsed, with_spec_dir(os.environ if env is None else env, path), unset=unset)
    _refuse_job_shaping(unset or {}, parsed)
    try:
        model = SpecModel.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, parsed) from None
    spec = build_spec(model, parsed, source=path, known_providers=known_providers)
    return replace(spec, unset_env={name: uses[0] for name, uses in (unset or {}).items()})


JOB_SHAPING: tuple[FieldPath, ...] = (
    ("name",),
    ("prompts",),
    ("matrix",),
    ("seeds",),
    ("repeats",),
    ("output", "path"),
)
"""Where a ``${VAR}`` changes the job list (prompts, parameters, ids, paths): even a dry
run needs its value, since a placeholder would plan jobs the run would not do. The
providers' ``type``, ``params`` and ``pass_through`` are such places too."""
_PROVIDER_SHAPING = frozenset({"type", "params", "pass_through"})


def _shapes_jobs(path: FieldPath) -> bool:
    if any(path[: len(prefix)] == prefix for prefix in JOB_SHAPING):
        return True
    return len(path) > 2 and path[0] == "providers" and path[2] in _PROVIDER_SHAPING


def _refuse_job_shaping(unset: Mapping[str, list[FieldPath]], parsed: ParsedYaml) -> None:
    problems = []
    for name, uses in unset.items():
        shaping = [use for use in uses if _shapes_jobs(use)]
        if shaping:
            problems.append(
                parsed.error(
                    f"environment variable {name} is not set",
                    shaping[0],
                    f"export {name}=...: even plan and validate need it here, since it "
                    "changes the jobs (what each one asks for, and its id)",
                )
            )
    if problems:
        raise combined(problems)


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
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _spec_error(exc: ValidationError, parsed: ParsedYaml) -> SpecError:
    """Every problem pydantic found, once per field, in the order of the file."""
    problems: dict[FieldPath, SpecError] = {}
    for error in _each_unknown_key(exc.errors(include_url=False), parsed):
        field_path = _field_path(error)
        if field_path not in problems:
            raw = _raw_at(parsed.data, field_path)
            message, hint = _message(error, raw)
            if _left_unexpanded(raw, error.get("input")):
                hint = "a ${VAR} here is needed even by plan and validate: export it"
            problems[field_path] = parsed.error(message, field_path, hint)
    return combined(list(problems.values()))


def _each_unknown_key(errors: list[ErrorDetails], parsed: ParsedYaml) -> list[ErrorDetails]:
    """The schema names a section's first unknown key: name each one, at its own line."""
    out: list[ErrorDetails] = []
    for error in errors:
        out.append(error)
        ctx = error.get("ctx") or {}
        if error["type"] != "unknown_key":
            continue
        allowed = set(str(ctx["allowed"]).split(", "))
        section = _raw_at(parsed.data, _field_path(error)[:-1])
        for key in section if isinstance(section, dict) else ():
            if str(key) not in allowed and str(key) != str(ctx["key"]):
                other = dict(error)
                other["ctx"] = {**ctx, "key": str(key)}
                other["msg"] = f"unknown key '{key}'; allowed keys: {ctx['allowed']}"
                out.append(cast(ErrorDetails, other))
    return out


def _field_path(error: ErrorDetails) -> FieldPath:
    parts: list[str | int] = [
        part for part in error["loc"] if part not in UNION_TAGS and part != "[key]"
    ]
    if error["type"] in ("unknown_key", "extra_forbidden"):
        key = (error.get("ctx") or {}).get("key")
        if key is not None:
            parts.append(str(key))
    return tuple(parts)


def _left_unexpanded(raw: Any, value: Any) -> bool:
    """The value is a ``${VAR}`` a dry run left as written, since it is unset."""
    return isinstance(raw, str) and isinstance(value, str) and "${" in raw and "${" in value


def _raw_at(data: Any, path: FieldPath) -> Any:
    """The value at ``path`` as written, before ``${VAR}`` expansion (None if absent)."""
    for part in path:
        found = isinstance(data, dict) and part in data
        found = found or (isinstance(data, list) and isinstance(part, int) and part < len(data))
        if not found:
            return None
        data = data[part]
    return data


def _message(error: ErrorDetails, raw: Any = None) -> tuple[str, str | None]:
    """The problem in our words, and what to do about it (pydantic's own text is the
    last resort). Values are quoted as written (``raw``): never a variable's value."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if "[key]" in error["loc"]:
        return "keys here must be text", None
    if kind == "missing":
        return "this field is required", None
    if kind == "unknown_key":
        allowed = str(ctx["allowed"]).split(", ")
        return str(error["msg"]), _did_you_mean(str(ctx["key"]), allowed)
    if kind == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}", None
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"]), None
    return _value_message(error, raw)


def _value_message(error: ErrorDetails, raw: Any) -> tuple[str, str | None]:
    """A value of the wrong kind, or out of its bounds or choices."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = raw if raw is not None else error.get("input")
    shown = _shown(raw) if raw is not None else _kind_of(value)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown}", None
    if kind == "literal_error":
        choices = [c.strip("'\"") for c in re.split(r", | or ", str(ctx["expected"]))]
        message = f"expected one of {', '.join(choices)}, got {shown}"
        return message, _did_you_mean(str(value), choices)
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}, got {shown}", None
    if kind in ("too_short", "string_too_short"):
        return _too_short(ctx, value), None
    if kind in ("too_long", "string_too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"at most {ctx['max_length']} {unit} here, got {_length(value)}", None
    return str(error["msg"]), None


def _too_short(ctx: Mapping[str, Any], value: object) -> str:
    least = ctx.get("min_length", 1)
    if isinstance(value, str):
        return "must not be empty" if least == 1 else f"needs at least {least} characters"
    return f"needs at least {least} item{'s' if least != 1 else ''}, got {_length(value)}"


def _length(value: object) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _shown(value: object) -> str:
    """The value as the user wrote it, short: ``'abc'``, ``-1``, ``a list``."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return _kind_of(value)


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
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
