"""One definition per spec field: a setting's default and description live only in its
frozen dataclass (``pipeline.models``); the pydantic schema takes them from there, and the
converter copies values without defaults of its own."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from pipeline.models import (
    OutputSettings,
    Price,
    ProviderSettings,
    RunSettings,
    Spec,
    WebhookSettings,
)
from pipeline.spec import convert, schema
from pipeline.spec.schema import (
    LimitsModel,
    OutputModel,
    PriceModel,
    ProviderModel,
    RunModel,
    SpecModel,
    WebhooksModel,
)
from tests.test_spec import MINIMAL, load

PAIRS: list[tuple[type[BaseModel], Any]] = [
    (OutputModel, OutputSettings),
    (PriceModel, Price),
    (LimitsModel, ProviderSettings),
    (ProviderModel, ProviderSettings),
    (RunModel, RunSettings),
    (WebhooksModel, WebhookSettings),
    (SpecModel, Spec),
]
"""Each section of the spec and the dataclass its keys end up in."""


def mirrored(model: type[BaseModel], cls: Any) -> list[str]:
    """Keys of ``model`` that are defaulted fields of ``cls``: their default and
    description belong to ``cls``. A required key or a nested section is not a setting."""
    defaulted = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    return [
        name
        for name, info in model.model_fields.items()
        if name in defaulted and not info.is_required() and not _is_section(info.annotation)
    ]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(cls: Any, name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _declarations(module: Any) -> dict[tuple[str, str], ast.expr | None]:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    return {
        (node.name, item.target.id): item.value
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }


@pytest.mark.parametrize(("model", "cls"), PAIRS, ids=lambda x: x.__name__)
def test_a_setting_is_declared_in_the_schema_through_its_dataclass(
    model: type[BaseModel], cls: Any
) -> None:
    """A key mirrored from a settings field is ``setting(cls, name)``, not a second
    ``Field(<default>, description=...)``."""
    declarations = _declarations(schema)
    redeclared = [
        name
        for name in mirrored(model, cls)
        if not _calls(declarations[(model.__name__, name)], "setting")
    ]
    assert redeclared == []


def _calls(node: ast.expr | None, function: str) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function
    )


@pytest.mark.parametrize(("model", "cls"), PAIRS, ids=lambda x: x.__name__)
def test_schema_defaults_and_descriptions_are_the_dataclasses(
    model: type[BaseModel], cls: Any
) -> None:
    for name in mirrored(model, cls):
        info, spec_field = model.model_fields[name], _field(cls, name)
        assert info.description == spec_field.metadata["description"], name
        if spec_field.default_factory is not dataclasses.MISSING:
            assert info.default_factory is spec_field.default_factory, name
        else:
            assert info.default == spec_field.default, name


def test_the_converter_has_no_defaults_of_its_own() -> None:
    """A literal given to a model's constructor (``concurrency=4``, ``column=x or
    "prompt"``) would be a second default; the converter takes them from the dataclasses."""
    tree = ast.parse(Path(convert.__file__).read_text(encoding="utf-8"))
    models = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline.models"
        for alias in node.names
    }
    literals = [
        f"line {keyword.lineno}: {ast.unparse(keyword)}"
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        if call.func.id in models
        for keyword in call.keywords
        if _fallback_literals(keyword.value)
    ]
    assert literals == []


def _fallback_literals(node: ast.expr) -> list[ast.Constant]:
    """Literals ``node`` may evaluate to: itself, either side of ``or``, a branch of ``if``."""
    if isinstance(node, ast.Constant):
        return [node] if node.value is not None else []
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
        return [c for value in node.values for c in _fallback_literals(value)]
    if isinstance(node, ast.IfExp):
        return _fallback_literals(node.body) + _fallback_literals(node.orelse)
    return []


def test_a_minimal_spec_gets_the_dataclass_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, MINIMAL)
    assert spec.providers["pixai"] == ProviderSettings(name="pixai", type="pixai")
    assert spec.run == RunSettings(poll_defaults=frozenset({"initial", "max", "factor"}))
    assert spec.webhooks == WebhookSettings()
    assert spec.output == OutputSettings(root=spec.output.root)
    assert spec.repeats == _field(Spec, "repeats").default
    assert spec.seeds is None


EVERY_KEY = """
output: {root: elsewhere, path: "{job_id}/{index}.{ext}"}
providers:
  pixai:
    api_key: k
    base_url: https://api.example
    concurrency: 9
    rate: 5/s
    params: {style: anime}
    options: {completion: poll}
    emulate: true
    pass_through: [samplingSteps]
    limits: {max_response_bytes: 4096, max_download_bytes: 8192}
    allow_private_downloads: true
    price: {per_job: 0.5}
    budget: 3
prompts: [a cat]
seeds: [7]
repeats: 3
run:
  deadline: 10s
  poll: {initial: 2s, max: 1m, factor: 3}
  http_timeout: 5s
  retries: 1
  max_retry_after: 9s
  budget: 10
  currency: credits
  lease: 12s
webhooks: {host: 0.0.0.0, port: 8080, public_url: https://hooks.example}
"""


@pytest.mark.parametrize(
    "pick",
    [lambda s: s.providers["pixai"], lambda s: s.run, lambda s: s.webhooks, lambda s: s.output],
    ids=["provider", "run", "webhooks", "output"],
)
def test_every_key_set_reaches_the_frozen_model(tmp_path: Path, pick: Any) -> None:
    """No setting is dropped on the way: each one set in the spec differs from its default."""
    settings = pick(load(tmp_path, EVERY_KEY))
    defaulted = [
        f.name
        for f in dataclasses.fields(settings)
        if getattr(settings, f.name) == _default(f) and f.name != "poll_defaults"
    ]
    assert defaulted == []


def _default(spec_field: dataclasses.Field[Any]) -> Any:
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    return spec_field.default
