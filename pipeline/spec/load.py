"""YAML spec file → validated ``models.Spec``, or a SpecError that says where and why.

Loading goes: YAML (with the line of every key, ``spec.source``) → ``${VAR}`` expansion →
structural validation (pydantic models in ``spec.schema``; a value that is all one
``${VAR}`` is converted there for a number or true/false field) → meaning checks and
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
from pipeline.spec.source import (
    FieldPath,
    ParsedYaml,
    Variable,
    combined,
    expand_env,
    parse_yaml,
)
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
    jobs_needed: bool = True,
) -> Spec:
    """Load and check the spec at ``path``; ``known_providers`` are the API types there
    are adapters for; ``${VAR}`` comes from ``env`` (default: ``os.environ``).

    ``content`` (YAML text, or the parsed data) is the spec when it is not read from
    ``path``, which then only names it (relative files, errors, the folder's owner).
    ``require_env=False`` is for dry runs: an unset variable stays as written (in a
    number or true/false field, the field keeps its default) and is listed in
    ``Spec.unset_env``, unless it shapes the jobs (``JOB_SHAPING``). ``jobs_needed=False``
    (with it) is for commands that need only the output root: no variable is needed."""
    file = str(path)
    parsed = _parse(path, file, content)
    if not isinstance(parsed.data, dict):
        raise parsed.error(
            "a spec is a mapping with at least `providers:` and `prompts:`",
            (),
            "`pipeline init` writes a small example spec to start from",
        )
    unset: dict[str, list[FieldPath]] | None = None if require_env else {}
    whole: dict[FieldPath, Variable] = {}
    env = with_spec_dir(os.environ if env is None else env, path)
    data = expand_env(parsed, env, unset=unset, whole=whole)
    if jobs_needed:
        _refuse_job_shaping(unset or {}, parsed)
    model = _validated(data, parsed, whole)
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


# --- structural validation, and ${VAR} in typed fields --------------------------------


def _validated(data: Any, parsed: ParsedYaml, variables: Mapping[FieldPath, Variable]) -> SpecModel:
    """``data`` as a SpecModel. Where a number or true/false is expected and the value is
    all one ``${VAR}``, its text is converted and validated again (an unset one, in a dry
    run, is left out so that the field keeps its default)."""
    typed = _TypedVariables(parsed, variables)
    while True:
        try:
            return SpecModel.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if not typed.convert(data, errors):
                raise _spec_error(errors, parsed, typed) from None


def _to_int(text: str) -> int:
    if not re.fullmatch(r"[-+]?[0-9]+", text.strip()):
        raise ValueError(text)
    return int(text)


def _to_float(text: str) -> float:
    number = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
    if not re.fullmatch(number, text.strip()):
        raise ValueError(text)  # nan and inf too
    return float(text)


def _to_bool(text: str) -> bool:
    """As YAML in a spec: true or false, in any case."""
    word = text.strip().lower()
    if word not in ("true", "false"):
        raise ValueError(text)
    return word == "true"


_CONVERTERS = {"int_type": _to_int, "float_type": _to_float, "bool_type": _to_bool}
"""The strict type errors a text value gets where a number or true/false is expected."""
_NOT_THE_VALUE = frozenset({"unknown_key", "extra_forbidden", "missing"})
"""Errors about a key rather than its value."""


class _TypedVariables:
    """What became of each whole-value ``${VAR}`` that a typed field refused as text."""

    def __init__(self, parsed: ParsedYaml, variables: Mapping[FieldPath, Variable]) -> None:
        self.parsed, self.variables = parsed, variables
        self.converted: dict[FieldPath, tuple[Variable, Any]] = {}
        self.defaulted: dict[FieldPath, Variable] = {}
        self.problems: dict[FieldPath, SpecError] = {}

    def convert(self, data: Any, errors: list[ErrorDetails]) -> bool:
        """Convert (in ``data``) each value these errors are about that can be; whether
        any was, so that validating again is worth it."""
        changed = False
        for error in errors:
            path, kind = _field_path(error), error["type"]
            variable = self.variables.get(path)
            if variable is None or kind in _NOT_THE_VALUE or self._seen(path):
                continue
            parent = _raw_at(data, path[:-1])
            if not variable.is_set:
                if isinstance(parent, dict):
                    del parent[path[-1]]  # the field's default, for a dry run
                    self.defaulted[path] = variable
                    changed = True
                continue
            if kind not in _CONVERTERS:
                continue
            text = parent[path[-1]]
            try:
                parent[path[-1]] = value = _CONVERTERS[kind](text)
            except ValueError:
                shown = _variable_value(variable.name, text, _api_keys(data))
                message = f"{variable.written} is {shown}, expected {_EXPECTED[kind]}"
                self.problems[path] = self.parsed.error(message, path)
                continue
            self.converted[path] = (variable, value)
            changed = True
        return changed

    def _seen(self, path: FieldPath) -> bool:
        return path in self.converted or path in self.defaulted or path in self.problems


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|AUTH|CRED", re.IGNORECASE)


def _variable_value(name: str, text: str, secrets: Collection[str]) -> str:
    """A variable's value for an error: as it is, unless it may be a secret in the wrong
    place (long, an API key, or of a variable named like one); then only its length."""
    if len(text) <= 24 and not _SECRET_NAME.search(name) and text not in secrets:
        return repr(text)
    return f"{len(text)} characters of text (not shown: it may be a secret)"


def _api_keys(data: Any) -> set[str]:
    providers = data.get("providers") if isinstance(data, dict) else None
    return {
        str(item["api_key"])
        for item in (providers.values() if isinstance(providers, dict) else ())
        if isinstance(item, dict) and item.get("api_key")
    }


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


def _spec_error(
    errors: list[ErrorDetails], parsed: ParsedYaml, typed: _TypedVariables
) -> SpecError:
    """Every problem pydantic found, once per field, in the order of the file."""
    problems: dict[FieldPath, SpecError] = dict(typed.problems)
    for error in _each_unknown_key(errors, parsed):
        field_path = _field_path(error)
        if field_path not in problems:
            problems[field_path] = _problem(error, field_path, parsed, typed)
    return combined(list(problems.values()))


def _problem(
    error: ErrorDetails, field_path: FieldPath, parsed: ParsedYaml, typed: _TypedVariables
) -> SpecError:
    raw = _raw_at(parsed.data, field_path)
    if field_path in typed.converted:
        variable, value = typed.converted[field_path]
        message, hint = _message(error, value, got=False)
        return parsed.error(f"{variable.written} is {_shown(value)}: {message}", field_path, hint)
    if field_path in typed.defaulted:
        name = typed.defaulted[field_path].name
        return parsed.error(
            f"environment variable {name} is not set",
            field_path,
            f"export {name}=...: this field has no default, so even plan and validate need it",
        )
    message, hint = _message(error, raw)
    if _left_unexpanded(raw, error.get("input")):
        hint = "a ${VAR} here is needed even by plan and validate: export it"
    elif error["type"] in _CONVERTERS and isinstance(raw, str) and "${" in raw:
        hint = "only a value that is all one ${VAR} is converted to a number or true/false"
    return parsed.error(message, field_path, hint)


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


def _message(error: ErrorDetails, raw: Any = None, *, got: bool = True) -> tuple[str, str | None]:
    """The problem in our words, and what to do about it (pydantic's own text is the
    last resort). Values are quoted as written (``raw``): never a variable's value.
    ``got=False``: the value is not repeated (the caller shows it)."""
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
    return _value_message(error, raw, got)


def _value_message(error: ErrorDetails, raw: Any, got: bool) -> tuple[str, str | None]:
    """A value of the wrong kind, or out of its bounds or choices."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = raw if raw is not None else error.get("input")
    shown = _shown(raw) if raw is not None else _kind_of(value)
    suffix = f", got {shown}" if got else ""
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{suffix}", None
    if kind == "literal_error":
        choices = [c.strip("'\"") for c in re.split(r", | or ", str(ctx["expected"]))]
        message = f"expected one of {', '.join(choices)}{suffix}"
        return message, _did_you_mean(str(value), choices)
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}{suffix}", None
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
    _accept_variables(schema)
    schema["$defs"][_VARIABLE] = {
        "type": "string",
        "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$",
        "description": "an environment variable, ${NAME} or ${NAME:-default}, whose "
        "value is converted to the field's type",
    }
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


_VARIABLE = "EnvVariable"
_TYPED = frozenset({"integer", "number", "boolean"})
_ANNOTATIONS = frozenset({"title", "description", "default"})


def _accept_variables(schema: Any, *, alternative: bool = False) -> None:
    """Let every number and true/false field also take a whole-value ``${VAR}``, as the
    loader does (a choice of fixed values does not). An ``alternative`` of an ``anyOf``
    is not wrapped itself: its ``anyOf`` gets the variable, if all its choices allow."""
    if not isinstance(schema, dict):
        return
    for key in ("items", "additionalProperties"):
        _accept_variables(schema.get(key))
    for key in ("properties", "$defs"):
        for inner in (schema.get(key) or {}).values():
            _accept_variables(inner)
    for key in ("anyOf", "oneOf"):
        for inner in schema.get(key) or ():
            _accept_variables(inner, alternative=True)
    variable = {"$ref": f"#/$defs/{_VARIABLE}"}
    choices = schema.get("anyOf")
    if choices is not None:
        if all(_scalar_choice(choice) for choice in choices) and any(
            _type_of(choice) in _TYPED for choice in choices
        ):
            choices.append(variable)
    elif not alternative and _type_of(schema) in _TYPED and not {"const", "enum"} & set(schema):
        typed = {key: schema.pop(key) for key in list(schema) if key not in _ANNOTATIONS}
        schema["anyOf"] = [typed, variable]


def _type_of(schema: Any) -> str | None:
    """The one JSON type ``schema`` allows, if it names one."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind if isinstance(kind, str) else None


def _scalar_choice(choice: Any) -> bool:
    """A choice a ``${VAR}`` cannot be mistaken for: a number, true/false, null or
    patterned text (the loader converts only where the field is all of these)."""
    kind = _type_of(choice)
    return kind in (*_TYPED, "null") or (kind == "string" and "pattern" in choice)


def _schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(_schema_text(), end="")
