"""Spec YAML → plain data, with the line of every key, and ``${VAR}`` expansion.

The loader is PyYAML's safe loader with three YAML 1.1 surprises removed, because specs
are full of values they mangle: ``16:9`` stays a string (not the base-60 integer 969),
``yes``/``no``/``on``/``off`` stay strings (only ``true``/``false`` are booleans), and
dates stay strings. Duplicate keys are an error instead of silently keeping the last.

Resource limits, checked while composing, before any value is built: nesting deeper
than ``MAX_DEPTH`` and aliases that would add more than ``MAX_ALIAS_VALUES`` values
("billion laughs") are refused at their line, in time linear in the file's size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.errors import SpecError

__all__ = [
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_SHOWN",
    "FieldPath",
    "ParsedYaml",
    "Variable",
    "combined",
    "expand_env",
    "format_path",
    "parse_yaml",
    "unset_error",
]

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists a spec may have (real specs use under 10)."""
MAX_ALIAS_VALUES = 100_000
"""How many values aliases (``*name``, ``<<: *name``) may add to a spec in all."""

MAX_SHOWN = 20
"""How many of a spec's problems one error shows (the rest are counted)."""

FieldPath = tuple[str | int, ...]
"""Where a value sits: ``("providers", "pixai", "rate")``, ``("prompts", 2, "file")``."""

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE_KEY = "<<"


class _TooLarge(Exception):
    """A resource limit was hit while composing, at ``line``."""

    def __init__(self, message: str, line: int, hint: str) -> None:
        super().__init__(message)
        self.line, self.hint = line, hint


class _SpecLoader(yaml.SafeLoader):
    """Safe loader with YAML 1.2-like scalars and the resource limits (see the module
    docstring)."""

    yaml_implicit_resolvers = {  # noqa: RUF012 -- PyYAML reads this class attribute
        first: [(tag, rx) for tag, rx in resolvers if tag not in {_BOOL, _INT, _FLOAT, _TIMESTAMP}]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """PyYAML's composer recurses once per level: stop it long before Python would."""
        if self._depth >= MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            raise _TooLarge(
                f"the YAML nests deeper than {MAX_DEPTH} levels", line, "flatten the structure"
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_alias_growth(root: yaml.Node) -> None:
    """Refuse aliases that expand the document by more than ``MAX_ALIAS_VALUES`` values.

    Sizes are counted once per distinct node (aliases share nodes), so a bomb costs no
    more than its text; a node larger than every distinct node seen so far plus the
    allowance can only be alias growth."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in visiting:
            raise _TooLarge(
                "a YAML alias refers to itself", node.start_mark.line + 1, "remove the alias"
            )
        visiting.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        visiting.discard(id(node))
        sizes[id(node)] = total
        if total > len(sizes) + MAX_ALIAS_VALUES:
            raise _TooLarge(
                f"YAML aliases here expand to {total:,} values (at most "
                f"{MAX_ALIAS_VALUES:,} may come from aliases)",
                node.start_mark.line + 1,
                "write the values out, or move long lists into a prompt file",
            )
        return total

    size(root)


_SpecLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0b[01_]+)$"),
    list("-+0123456789"),
)
_SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


@dataclass(frozen=True, slots=True)
class ParsedYaml:
    """The data of a YAML file and the 1-based line of each key and list item in it."""

    file: str
    data: Any
    lines: Mapping[FieldPath, int]

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(_line_key(path[:end]))
            if line is not None:
                return line
        return None

    def error(self, message: str, path: FieldPath, hint: str | None = None) -> SpecError:
        """A SpecError for the value at ``path``, naming this file and its line."""
        return SpecError(
            message, file=self.file, line=self.line_of(path), path=format_path(path), hint=hint
        )


def _line_key(path: FieldPath) -> FieldPath:
    return tuple(part if isinstance(part, int) else str(part) for part in path)


def format_path(path: FieldPath) -> str:
    """``("prompts", 2, "file")`` → ``"prompts[2].file"``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_yaml(text: str, *, file: str) -> ParsedYaml:
    """Parse one YAML document; any YAML problem becomes a SpecError at its line."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return ParsedYaml(file, None, {})
        _check_alias_growth(node)
        lines: dict[FieldPath, int] = {(): node.start_mark.line + 1}
        _record_lines(node, (), lines, file, ancestors=())
        return ParsedYaml(file, loader.construct_document(node), lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        context_mark = exc.context_mark
        if exc.context and context_mark is not None and context_mark is not mark:
            problem += f" ({exc.context} at line {context_mark.line + 1})"
        raise SpecError(
            f"YAML syntax error: {problem}",
            file=file,
            line=line,
            hint=_syntax_hint(text, line),
        ) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=file) from exc
    except _TooLarge as exc:
        raise SpecError(
            str(exc),
            file=file,
            line=exc.line,
            hint=exc.hint,
        ) from None
    finally:
        loader.dispose()


def _syntax_hint(text: str, line: int | None) -> str:
    lines = text.splitlines()
    if line is not None and 0 < line <= len(lines) and "${" in lines[line - 1]:
        return 'inside { } or [ ], quote a ${VAR}: port: "${PORT}"'
    return "check the indentation; quote values containing ': ' or starting with { * &"


def _record_lines(
    node: yaml.Node,
    path: FieldPath,
    lines: dict[FieldPath, int],
    file: str,
    ancestors: tuple[int, ...],
) -> None:
    if id(node) in ancestors:
        raise SpecError("a YAML alias refers to itself", file=file, line=node.start_mark.line + 1)
    inner = (*ancestors, id(node))
    if isinstance(node, yaml.MappingNode):
        _record_mapping_lines(node, path, lines, file, inner)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*path, index), item.start_mark.line + 1)
            _record_lines(item, (*path, index), lines, file, inner)


def _record_mapping_lines(
    node: yaml.MappingNode,
    path: FieldPath,
    lines: dict[FieldPath, int],
    file: str,
    ancestors: tuple[int, ...],
) -> None:
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key == _MERGE_KEY:
            continue
        if key in seen:
            raise SpecError(
                f"duplicate key {key!r}", file=file, line=line, path=format_path((*path, key))
            )
        seen.add(key)
        lines.setdefault((*path, key), line)
        _record_lines(value_node, (*path, key), lines, file, ancestors)


# --- ${VAR} expansion -----------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$(\$\{)|\$\{([^}]*)\}|(\$\{)")
_ENV_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_WHOLE_REFERENCE = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True, slots=True)
class Variable:
    """A value that is all one ``${VAR}``: as written, the variable's name, and whether it
    had a value (or a default); a number or true/false field converts such a value."""

    written: str
    name: str
    is_set: bool


def expand_env(
    parsed: ParsedYaml,
    env: Mapping[str, str],
    *,
    unset: dict[str, list[FieldPath]] | None = None,
    whole: dict[FieldPath, Variable] | None = None,
) -> Any:
    """A copy of ``parsed.data`` with ``${VAR}``/``${VAR:-default}`` expanded in every
    string value (``$${`` is a literal ``${``). A missing variable is a SpecError, unless
    ``unset`` is given: then it stays as written and ``unset`` gets its name and the
    paths where it is used (a dry run needs no secrets). ``whole`` gets each value that
    is all one ``${VAR}``, by its path."""
    return _Expander(env, parsed.error, unset, whole).expand(parsed.data, ())


_ErrorAt = Callable[[str, FieldPath, str | None], SpecError]


@dataclass(frozen=True, slots=True)
class _Expander:
    env: Mapping[str, str]
    error_at: _ErrorAt
    unset: dict[str, list[FieldPath]] | None
    whole: dict[FieldPath, Variable] | None = None

    def expand(self, value: Any, path: FieldPath) -> Any:
        if isinstance(value, str):
            return self.expand_text(value, path)
        if isinstance(value, dict):
            return {key: self.expand(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand(item, (*path, i)) for i, item in enumerate(value)]
        return value

    def expand_text(self, text: str, path: FieldPath) -> str:
        def replace(match: re.Match[str]) -> str:
            escaped, body, unterminated = match.groups()
            if escaped is not None:
                return "${"
            if unterminated is not None or body is None:
                raise self.error_at(
                    "unterminated '${' (write '$${' for a literal '${')", path, None
                )
            return self.value(body, match.group(0), path)

        expanded = _ENV_REFERENCE.sub(replace, text)
        whole = _WHOLE_REFERENCE.fullmatch(text)
        if whole is not None and self.whole is not None:
            name = whole.group(1).partition(":-")[0]
            was_unset = self.unset is not None and path in self.unset.get(name, ())
            self.whole[path] = Variable(text, name, is_set=not was_unset)
        return expanded

    def value(self, body: str, written: str, path: FieldPath) -> str:
        match = _ENV_BODY.fullmatch(body)
        if match is None:
            raise self.error_at(
                f"bad variable reference '${{{body}}}'",
                path,
                "write ${NAME} or ${NAME:-default}; NAME is letters, digits and _",
            )
        name, default = match.groups()
        value = self.env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return value  # set but empty, and no default: use it
        if self.unset is not None:
            self.unset.setdefault(name, []).append(path)
            return written
        raise unset_error(name, path, self.error_at)


def unset_error(name: str, path: FieldPath, error_at: _ErrorAt) -> SpecError:
    """The error for a variable a run needs and the environment lacks."""
    return error_at(
        f"environment variable {name} is not set", path, f"export {name}=... before running"
    )


def combined(problems: list[SpecError], *, shown: int = MAX_SHOWN) -> SpecError:
    """One error showing every problem (up to ``shown``), in the order of the file."""
    ordered = sorted(problems, key=lambda problem: problem.line or 0)
    first, *more = ordered[:shown]
    if not more:
        return first
    return SpecError(
        first.message,
        file=first.file,
        line=first.line,
        path=first.path,
        hint=first.hint,
        more=more,
        omitted=len(ordered) - shown if len(ordered) > shown else 0,
    )
