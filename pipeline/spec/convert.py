"""Validated pydantic spec → frozen ``models.Spec``, checking what types cannot say.

Provider names and types, output path template, prompt templates and files, matrix
references, seeds: each problem is a SpecError at the line of the field at fault. A key
that is a settings field of the same name is copied as it is (``_settings``); only keys
that change shape on the way are converted by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel

from pipeline import identity
from pipeline.errors import SpecError
from pipeline.models import (
    COMMON_PARAMS,
    MatrixSpec,
    OutputSettings,
    PlainPrompt,
    Price,
    PromptFile,
    PromptSource,
    ProviderSettings,
    RunSettings,
    Spec,
    TemplatePrompt,
    WebhookSettings,
)
from pipeline.prompts import META_KEY, meta_value_problem, read_csv_header, template_fields
from pipeline.spec.schema import (
    FileItem,
    MatrixModel,
    PriceModel,
    ProviderModel,
    SeedRange,
    SpecModel,
    TemplateItem,
    WebhooksModel,
    default_of,
)
from pipeline.spec.source import FieldPath, ParsedYaml, combined
from pipeline.units import parse_rate

__all__ = ["build_spec"]

_T = TypeVar("_T")
_PROVIDER_NAME = re.compile(r"[a-z0-9_-]+")
_RESERVED_PARAMS = ("prompt",)  # set from the prompt itself
PROVIDER_KEY = "provider"


def build_spec(
    model: SpecModel, parsed: ParsedYaml, *, source: Path, known_providers: Collection[str]
) -> Spec:
    """The ``Spec`` of a structurally valid spec file, or a SpecError showing the
    problems of every section (each section is checked even when another failed)."""
    problems: list[SpecError] = []

    def checked(build: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return build(*args)
        except SpecError as exc:
            problems.extend((exc, *exc.more))
            return None

    name = checked(_spec_name, model.name, source, parsed) or source.stem
    providers = {
        key: checked(_provider, key, item, parsed, known_providers)
        for key, item in model.providers.items()
    }
    checked(_check_budgets, model, parsed)
    base_dir = source.absolute().parent
    output = checked(_output, model, name, parsed)
    prompts = [checked(_prompt, item, i, base_dir, parsed) for i, item in enumerate(model.prompts)]
    matrix = checked(_matrix, model.matrix, list(providers), parsed)
    seeds = checked(_seeds, model.seeds, parsed)
    webhooks = checked(_webhooks, model.webhooks, parsed)
    checked(_manifest, model.manifest, parsed)
    if problems:
        raise combined(problems)
    assert output is not None and matrix is not None and webhooks is not None
    return Spec(
        source=source.absolute(),
        name=name,
        providers={key: item for key, item in providers.items() if item is not None},
        output=output,
        run=_run(model),
        raw=parsed.data,
        base_dir=base_dir,
        prompts=tuple(prompt for prompt in prompts if prompt is not None),
        matrix=matrix,
        seeds=seeds,
        repeats=model.repeats,
        webhooks=webhooks,
        manifest=model.manifest,
        lines=parsed.lines,
    )


def _all_of(checks: Iterable[Callable[[], object]]) -> None:
    """Run every check, so that one problem does not hide the next: one SpecError holds
    all they raised (``build_spec`` caps what is shown)."""
    problems: list[SpecError] = []
    for check in checks:
        try:
            check()
        except SpecError as exc:
            problems.extend((exc, *exc.more))
    if problems:
        raise combined(problems, shown=len(problems))


def _spec_name(name: str | None, source: Path, parsed: ParsedYaml) -> str:
    chosen = name if name is not None else source.stem
    if chosen.strip() in ("", ".", "..") or re.search(r"[/\\\x00-\x1f]", chosen):
        raise parsed.error(
            f"bad name {chosen!r}: it is used in paths, so no slashes or control characters",
            ("name",),
        )
    return chosen


# --- providers, output, run -----------------------------------------------------------


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]


_Settings = TypeVar("_Settings", bound=_Dataclass)


def _settings(cls: type[_Settings], *sections: BaseModel, **converted: Any) -> _Settings:
    """``cls`` with every field that a key of ``sections`` shares by name copied from it,
    and the others from ``converted``; what neither gives keeps the dataclass default."""
    copied = {
        field.name: getattr(section, field.name)
        for section in sections
        for field in dataclasses.fields(cls)
        if field.name in type(section).model_fields
    }
    return cls(**(copied | converted))


def _providers(
    models: Mapping[str, ProviderModel], parsed: ParsedYaml, known: Collection[str]
) -> dict[str, ProviderSettings]:
    return {name: _provider(name, item, parsed, known) for name, item in models.items()}


def _provider(
    name: str, item: ProviderModel, parsed: ParsedYaml, known: Collection[str]
) -> ProviderSettings:
    at: FieldPath = ("providers", name)
    api_type = item.type if item.type is not None else name

    def check_name() -> None:
        if not _PROVIDER_NAME.fullmatch(name):
            raise parsed.error(
                f"bad provider name {name!r}: use lowercase letters, digits, '_' and '-'", at
            )

    def check_type() -> None:
        if api_type not in known:
            close = difflib.get_close_matches(api_type, list(known), n=1)
            raise parsed.error(
                f"unknown provider type {api_type!r}"
                + (f"; did you mean {close[0]!r}?" if close else ""),
                (*at, "type"),
                f"known provider types: {', '.join(sorted(known)) or '(none installed)'}"
                + ("" if item.type else f"; set `type:` when the name {name!r} is not one"),
            )

    def check_base_url() -> None:
        if item.base_url is not None and not re.match(r"https?://|\$\{", item.base_url):
            raise parsed.error("base_url must start with http:// or https://", (*at, "base_url"))

    _all_of(
        [
            check_name,
            check_type,
            check_base_url,
            lambda: _check_params(item.params, (*at, "params"), parsed),
            lambda: _pass_through(item.pass_through, (*at, "pass_through"), parsed),
        ]
    )
    return _settings(
        ProviderSettings,
        item,
        item.limits,
        name=name,
        type=api_type,
        rate=parse_rate(item.rate) if item.rate is not None else None,
        pass_through=_pass_through(item.pass_through, (*at, "pass_through"), parsed),
        price=_price(item.price),
    )


def _price(model: PriceModel | None) -> Price | None:
    """Value keys as text: a job's parameter value is matched by its text (``1024``)."""
    if model is None:
        return None
    by = {name: {str(k): v for k, v in prices.items()} for name, prices in model.by.items()}
    return _settings(Price, model, by=by)


def _check_budgets(model: SpecModel, parsed: ParsedYaml) -> None:
    """A budget counts money, so what it counts must have a price."""
    problems = [
        parsed.error(
            "a budget needs a price",
            ("providers", name, "budget"),
            "set providers." + name + ".price, e.g. {per_job: 0.04}",
        )
        for name, item in model.providers.items()
        if item.budget is not None and item.price is None
    ]
    unpriced = [name for name, item in model.providers.items() if item.price is None]
    if model.run.budget is not None and unpriced:
        problems.append(
            parsed.error(
                f"run.budget needs a price for every provider; none for {', '.join(unpriced)}",
                ("run", "budget"),
            )
        )
    if problems:
        raise combined(problems, shown=len(problems))


def _pass_through(
    value: bool | Sequence[str], at: FieldPath, parsed: ParsedYaml
) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    for position, name in enumerate(value):
        if not name:
            raise parsed.error("a parameter name cannot be empty", (*at, position))
    return tuple(value)


def _output(model: SpecModel, name: str, parsed: ParsedYaml) -> OutputSettings:
    try:
        used = identity.check_path_template(model.output.path)
    except ValueError as exc:
        raise parsed.error(str(exc), ("output", "path")) from None
    _check_template_names(used, model, parsed)
    root = Path(model.output.root if model.output.root is not None else f"out/{name}")
    return _settings(OutputSettings, model.output, root=root.expanduser().absolute())


def _check_template_names(used: Collection[str], model: SpecModel, parsed: ParsedYaml) -> None:
    """Each parameter a template names is set somewhere in the spec or is a common one;
    each ``{meta.KEY}`` is a key of an inline prompt's ``meta``, unless a prompt file
    (whose keys only its lines know) may carry it. A job without it renders ``none``."""
    params = _params_set(model) | set(COMMON_PARAMS)
    meta_keys, from_files = _meta_keys(model, parsed)
    for name in sorted(used):
        key = name.removeprefix(identity.META_PREFIX)
        is_meta = key != name
        if name in params or (is_meta and (from_files or key in meta_keys)):
            continue
        known = [*identity.OUTPUT_FIELDS, *params, *(f"meta.{k}" for k in meta_keys)]
        close = difflib.get_close_matches(name, known, n=1)
        where = "no prompt sets metadata" if is_meta else "no provider, matrix or prompt sets"
        raise parsed.error(
            f"unknown field {{{name}}}: {where} {key!r}"
            + (f"; did you mean {{{close[0]}}}?" if close else ""),
            ("output", "path"),
            "fields: "
            + ", ".join(f"{{{field}}}" for field in sorted(set(known) - {"prompt"}))
            + ", and {meta.KEY} for a key of prompts' meta",
        )


def _params_set(model: SpecModel) -> set[str]:
    """Every parameter name the spec sets: provider defaults, matrix, prompts' params."""
    names = {key for provider in model.providers.values() for key in provider.params}
    names |= set(model.matrix.model_extra or {})
    names |= {key for entry in model.matrix.include for key in entry}
    names |= {key for item in model.prompts if not isinstance(item, str) for key in item.params}
    if model.seeds is not None:
        names.add("seed")
    return names - {PROVIDER_KEY}


def _meta_keys(model: SpecModel, parsed: ParsedYaml) -> tuple[set[str], bool]:
    """The metadata keys inline prompts declare (``meta:``, and a template's ``vars``,
    which are recorded as its metadata), and whether a prompt file may carry others."""
    from_files = any(isinstance(item, FileItem) for item in model.prompts)
    raw = parsed.data.get("prompts") if isinstance(parsed.data, Mapping) else None
    keys = {
        str(key)
        for item in (raw if isinstance(raw, list) else [])
        if isinstance(item, Mapping)
        for section in ("meta", "vars")
        if isinstance(item.get(section), Mapping)
        for key in item[section]
    }
    return keys, from_files


def _run(model: SpecModel) -> RunSettings:
    run, poll, default = model.run, model.run.poll, RunSettings()
    initial = default.poll_initial if poll.initial is None else poll.initial
    unset = {"initial": poll.initial, "max": poll.max, "factor": poll.factor}
    return _settings(
        RunSettings,
        run,
        poll_initial=initial,
        poll_max=max(default.poll_max if poll.max is None else poll.max, initial),
        poll_factor=default.poll_factor if poll.factor is None else poll.factor,
        poll_defaults=frozenset(name for name, value in unset.items() if value is None),
    )


def _webhooks(model: WebhooksModel, parsed: ParsedYaml) -> WebhookSettings:
    public_url = model.public_url
    if public_url is not None and not re.match(r"https?://[^/]|\$\{", public_url):
        raise parsed.error(
            "public_url must start with http:// or https://", ("webhooks", "public_url")
        )
    return _settings(WebhookSettings, model)


def _manifest(url: str | None, parsed: ParsedYaml) -> None:
    """A shared run's manifest is a PostgreSQL URL; one process's lives in the output
    root, so a path here would only mislead."""
    if url is not None and not re.match(r"(postgresql|postgres)://|\$\{", url):
        raise parsed.error(
            f"expected a PostgreSQL URL (postgresql://user@host/db), got {url!r}",
            ("manifest",),
            hint="leave it out to keep the manifest in the output root (manifest.sqlite)",
        )


# --- prompts --------------------------------------------------------------------------


def _prompt(
    item: str | TemplateItem | FileItem, index: int, base_dir: Path, parsed: ParsedYaml
) -> PromptSource:
    if isinstance(item, str):
        if not item.strip():
            raise parsed.error("the prompt is empty", ("prompts", index))
        return PlainPrompt(text=item, index=index)
    if isinstance(item, TemplateItem):
        return _template_prompt(item, index, parsed)
    return _prompt_file(item, index, base_dir, parsed)


def _template_prompt(item: TemplateItem, index: int, parsed: ParsedYaml) -> TemplatePrompt:
    at: FieldPath = ("prompts", index)

    def check_text() -> None:
        fields = _checked_template(item.text, (*at, "text"), parsed)
        _all_of(
            [
                lambda: _check_variables(fields, list(item.vars), (*at, "text"), parsed),
                *(
                    functools.partial(_unused_variable, name, (*at, "vars", name), parsed)
                    for name in item.vars
                    if name not in fields
                ),
            ]
        )

    _all_of(
        [
            check_text,
            lambda: _check_params(item.params, (*at, "params"), parsed),
            lambda: _checked_meta(item.meta, (*at, "meta"), parsed),
        ]
    )
    return TemplatePrompt(
        text=item.text,
        vars={name: tuple(values) for name, values in item.vars.items()},
        params=dict(item.params),
        index=index,
        meta=dict(item.meta),
    )


def _unused_variable(name: str, at: FieldPath, parsed: ParsedYaml) -> None:
    raise parsed.error(f"variable {name!r} is not used in text (it would repeat every prompt)", at)


def _checked_meta(meta: Mapping[str, Any], at: FieldPath, parsed: ParsedYaml) -> dict[str, Any]:
    """Inline metadata: text keys and scalar values, each problem at its own line."""
    problems = [
        parsed.error(problem, (*at, key))
        for key, value in meta.items()
        if (problem := meta_value_problem(key, value))
    ]
    if problems:
        raise combined(problems, shown=len(problems))
    return dict(meta)


def _checked_template(text: str, at: FieldPath, parsed: ParsedYaml) -> list[str]:
    try:
        return template_fields(text)
    except ValueError as exc:
        raise parsed.error(str(exc), at) from None


def _check_variables(
    fields: Sequence[str], available: Sequence[str], at: FieldPath, parsed: ParsedYaml
) -> None:
    problems = [
        parsed.error(
            f"unknown variable {{{name}}}; known: {', '.join(available) or '(none)'}",
            at,
            f"define it, or write {{{{{name}}}}} for literal braces",
        )
        for name in dict.fromkeys(fields)
        if name not in available
    ]
    if problems:
        raise combined(problems, shown=len(problems))


def _prompt_file(item: FileItem, index: int, base_dir: Path, parsed: ParsedYaml) -> PromptFile:
    at: FieldPath = ("prompts", index)
    path = (base_dir / item.file).absolute()
    if not path.is_file():
        raise parsed.error(
            f"prompt file not found: {path}",
            (*at, "file"),
            "prompt files are relative to the spec file's directory",
        )
    file_format = item.format or _format_from_suffix(path)
    for key in ("column", "text"):
        if file_format != "csv" and getattr(item, key) is not None:
            raise parsed.error(f"{key} applies to csv files only", (*at, key))
    _check_params(item.params, (*at, "params"), parsed)
    _check_meta_names(item.meta, file_format, (*at, "meta"), parsed)
    source = PromptFile(
        path=path,
        format=file_format,
        column=item.column or default_of(PromptFile, "column"),
        text=item.text,
        params=dict(item.params),
        index=index,
        meta=tuple(item.meta),
    )
    if file_format == "csv":
        _check_csv_columns(source, item, at, parsed)
    return source


def _check_meta_names(
    names: Sequence[str], file_format: str, at: FieldPath, parsed: ParsedYaml
) -> None:
    """The metadata columns or keys of a prompt file (csv columns are checked with the
    header): named once each, and for jsonl never the prompt or the metadata object."""
    if names and file_format == "txt":
        raise parsed.error(
            "meta applies to csv and jsonl files: it names their columns or keys",
            at,
            "use a csv or jsonl file to carry metadata",
        )
    seen: set[str] = set()
    for position, name in enumerate(names):
        if name in seen:
            raise parsed.error(f"{name!r} is listed twice", (*at, position))
        seen.add(name)
        if file_format == "jsonl" and name in ("prompt", META_KEY):
            raise parsed.error(
                f"{name!r} cannot be a metadata key: "
                + ("it is the prompt" if name == "prompt" else "it is the metadata object"),
                (*at, position),
            )


def _format_from_suffix(path: Path) -> Literal["txt", "csv", "jsonl"]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    return "jsonl" if suffix in (".jsonl", ".ndjson") else "txt"


def _check_csv_columns(
    source: PromptFile, item: FileItem, at: FieldPath, parsed: ParsedYaml
) -> None:
    header = read_csv_header(source)
    if source.text is not None:
        fields = _checked_template(source.text, (*at, "text"), parsed)
        _check_variables(fields, header, (*at, "text"), parsed)
    elif source.column not in header:
        raise parsed.error(
            f"{source.path.name} has no column {source.column!r}; columns: {', '.join(header)}",
            (*at, "column") if item.column is not None else (*at, "file"),
            "set `column:` to the prompt column",
        )
    for position, name in enumerate(source.meta):
        if name not in header:
            raise parsed.error(
                f"{source.path.name} has no column {name!r}; columns: {', '.join(header)}",
                (*at, "meta", position),
            )


# --- matrix and seeds -----------------------------------------------------------------


def _matrix(model: MatrixModel, providers: list[str], parsed: ParsedYaml) -> MatrixSpec:
    dimensions = dict((model.model_extra or {}).items())
    checks: list[Callable[[], object]] = [
        functools.partial(_check_cell, {key: value}, ("matrix", key, position), providers, parsed)
        for key, values in dimensions.items()
        for position, value in enumerate(values)
    ]
    provider_values = dimensions.pop(PROVIDER_KEY, providers)
    checks += [
        functools.partial(_check_cell, entry, ("matrix", "include", position), providers, parsed)
        for position, entry in enumerate(model.include)
    ]
    names = [*dimensions, PROVIDER_KEY]
    checks += [
        functools.partial(_check_exclude, entry, ("matrix", "exclude", position), names, parsed)
        for position, entry in enumerate(model.exclude)
    ]
    _all_of(checks)
    return MatrixSpec(
        dimensions=(
            *((key, tuple(values)) for key, values in dimensions.items()),
            (PROVIDER_KEY, tuple(provider_values)),
        ),
        include=tuple(dict(entry) for entry in model.include),
        exclude=tuple(dict(entry) for entry in model.exclude),
    )


def _check_cell(
    cell: Mapping[str, Any], at: FieldPath, providers: list[str], parsed: ParsedYaml
) -> None:
    _check_params(cell, at, parsed)
    provider = cell.get(PROVIDER_KEY)
    if PROVIDER_KEY in cell and provider not in providers:
        raise parsed.error(
            f"provider {provider!r} is not defined under providers:",
            at,
            f"defined providers: {', '.join(providers)}",
        )


def _check_exclude(
    entry: Mapping[str, Any], at: FieldPath, dimensions: list[str], parsed: ParsedYaml
) -> None:
    if not entry:
        raise parsed.error("an empty exclude entry would remove every combination", at)
    problems = [
        parsed.error(
            f"exclude key {key!r} is not a matrix dimension",
            (*at, key),
            f"dimensions: {', '.join(dimensions)}",
        )
        for key in entry
        if key not in dimensions
    ]
    if problems:
        raise combined(problems, shown=len(problems))


def _seeds(seeds: list[int] | SeedRange | None, parsed: ParsedYaml) -> Sequence[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, SeedRange):
        return range(seeds.start, seeds.start + seeds.count)
    seen: set[int] = set()
    problems: list[SpecError] = []
    for position, seed in enumerate(seeds):
        if seed in seen:
            problems.append(parsed.error(f"seed {seed} is listed twice", ("seeds", position)))
        seen.add(seed)
    if problems:
        raise combined(problems, shown=len(problems))
    return tuple(seeds)


def _check_params(params: Mapping[str, Any], at: FieldPath, parsed: ParsedYaml) -> None:
    for reserved in _RESERVED_PARAMS:
        if reserved in params:
            raise parsed.error(f"{reserved!r} is set from prompts:, not as a parameter", at)
    try:
        identity.canonical_json(params)
    except (ValueError, TypeError) as exc:
        raise parsed.error(f"cannot be sent as JSON: {exc}", at) from None
