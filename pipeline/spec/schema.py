"""The shape of a spec file, as pydantic models: validation and the JSON Schema.

Only ``pipeline.spec.load`` uses these; everything else sees the frozen dataclasses of
``pipeline.models``. Each field's ``description`` is the user documentation of that field
(it ends up in ``pipeline/schema.json``). A key that is a field of those dataclasses is
declared with ``setting()``: its default and description are the dataclass field's, so
they are written once; here a key adds only its spec type and its checks.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from pipeline.models import (
    OutputSettings,
    Price,
    PromptFile,
    ProviderSettings,
    RunSettings,
    Spec,
    TemplatePrompt,
    WebhookSettings,
)
from pipeline.units import DURATION_PATTERN, RATE_PATTERN, parse_duration, parse_rate

__all__ = [
    "UNION_TAGS",
    "FileItem",
    "LimitsModel",
    "MatrixModel",
    "OutputModel",
    "PriceModel",
    "ProviderModel",
    "RunModel",
    "SeedRange",
    "SpecModel",
    "TemplateItem",
    "WebhooksModel",
    "default_of",
    "setting",
]

_PLAIN, _TEMPLATE, _FILE = "<plain prompt>", "<template prompt>", "<prompt file>"
_SEED_LIST, _SEED_RANGE = "<seed list>", "<seed range>"
UNION_TAGS = frozenset({_PLAIN, _TEMPLATE, _FILE, _SEED_LIST, _SEED_RANGE})
"""Tags pydantic puts into error locations; they are not keys of the spec."""


class _Section(BaseModel):
    """A mapping in the spec: strict types, and unknown keys rejected by name."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _reject_unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """Unknown keys are named with the allowed ones; the known keys beside them are
        still validated, so one typo does not hide a bad value in the same section."""
        if not isinstance(data, dict):
            return handler(data)
        allowed = list(cls.model_fields)
        unknown = [key for key in data if key not in allowed]
        if not unknown:
            return handler(data)
        errors: list[InitErrorDetails] = [
            {
                "type": PydanticCustomError(
                    "unknown_key",
                    UNKNOWN_KEY,
                    {"key": str(unknown[0]), "allowed": ", ".join(allowed)},
                ),
                "loc": (),
                "input": data,
            }
        ]
        try:
            handler({key: value for key, value in data.items() if key in allowed})
        except ValidationError as exc:
            errors.extend(
                _line_error(error)
                for error in exc.errors(include_url=False)
                if not _missing_here(error)  # most likely the unknown key, misspelt
            )
        raise ValidationError.from_exception_data(cls.__name__, errors)


def _missing_here(error: ErrorDetails) -> bool:
    """A required key of this very section is absent (not one of a section inside it)."""
    return error["type"] == "missing" and len(error["loc"]) == 1


UNKNOWN_KEY = "unknown key '{key}'; allowed keys: {allowed}"


def _line_error(error: ErrorDetails) -> InitErrorDetails:
    """A problem found beside an unknown key, raised again with it (ours by template)."""
    ctx = error.get("ctx")
    kind: str | PydanticCustomError = error["type"]
    if kind == "unknown_key" and ctx is not None:
        kind = PydanticCustomError("unknown_key", UNKNOWN_KEY, ctx)
    found: InitErrorDetails = {"type": kind, "loc": error["loc"], "input": error["input"]}
    if ctx is not None and not isinstance(kind, PydanticCustomError):
        found["ctx"] = ctx
    return found


def _field_of(cls: type[Any], name: str) -> dataclasses.Field[Any]:
    return next(field for field in dataclasses.fields(cls) if field.name == name)


def default_of(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls``."""
    field = _field_of(cls, name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def setting(cls: type[Any], name: str, **constraints: Any) -> Any:
    """A spec key that is field ``name`` of the settings dataclass ``cls``: default and
    description come from that field; ``constraints`` (``ge=``, ``min_length=``…) are
    the spec's own checks."""
    field = _field_of(cls, name)
    described = {"description": field.metadata["description"], **constraints}
    if field.default_factory is not dataclasses.MISSING:
        return Field(default_factory=field.default_factory, **described)
    return Field(field.default, **described)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _checked_rate(value: Any) -> Any:
    parse_rate(value)
    return value


def _emulator_knobs(value: Any) -> Any:
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, dict):
        return value
    raise ValueError("emulate is true, false, or a mapping of emulator knobs")


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or text like '250ms', '90s', '5m', '1h30m'",
        }
    ),
]
RateText = Annotated[
    str | float,
    BeforeValidator(_checked_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": RATE_PATTERN},
            ],
            "description": "requests per time, like '60/min', '5/s', '1000/hour'; "
            "a number is per second",
        }
    ),
]
EmulatorKnobs = Annotated[
    dict[str, Any] | None,
    BeforeValidator(_emulator_knobs),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "object"}]}),
]
Scalar = str | int | float | bool
VarValues = Annotated[list[Scalar], BeforeValidator(_as_list), Field(min_length=1)]
MetaValues = Annotated[
    dict[str, Any],  # values are checked by the converter, to name the bad one and its line
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        }
    ),
]
PassThrough = Annotated[
    bool | list[str],
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "string"}}]}
    ),
]


class OutputModel(_Section):
    root: str | None = Field(
        None,
        description="Directory the outputs go into. A relative path is relative to the "
        "directory `pipeline` runs in. Default: out/<name>.",
    )
    path: str = setting(OutputSettings, "path")


class LimitsModel(_Section):
    max_response_bytes: int = setting(ProviderSettings, "max_response_bytes", ge=1024)
    max_download_bytes: int = setting(ProviderSettings, "max_download_bytes", ge=1024)


Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceModel(_Section):
    per_job: Money | None = setting(Price, "per_job")
    per_output: Money | None = setting(Price, "per_output")
    by: dict[str, dict[str | int | float | bool, Money]] = setting(Price, "by")

    @model_validator(mode="after")
    def _one_unit(self) -> PriceModel:
        if (self.per_job is None) == (self.per_output is None):
            raise PydanticCustomError("price_unit", "a price has per_job or per_output (one)")
        if len(self.by) > 1:
            raise PydanticCustomError("price_by", "price.by names one parameter")
        return self


class ProviderModel(_Section):
    type: str | None = Field(
        None, description="The API this provider speaks. Default: the provider's key."
    )
    api_key: str | None = setting(ProviderSettings, "api_key")
    base_url: str | None = setting(ProviderSettings, "base_url")
    concurrency: int = setting(ProviderSettings, "concurrency", ge=1)
    rate: RateText | None = setting(ProviderSettings, "rate")
    params: dict[str, Any] = setting(ProviderSettings, "params")
    options: dict[str, Any] = setting(ProviderSettings, "options")
    emulate: EmulatorKnobs = setting(ProviderSettings, "emulate")
    pass_through: PassThrough = setting(ProviderSettings, "pass_through")
    limits: LimitsModel = Field(
        default_factory=lambda: LimitsModel.model_validate({}),
        description="Byte caps on API answers and downloads.",
    )
    allow_private_downloads: bool = setting(ProviderSettings, "allow_private_downloads")
    price: PriceModel | None = setting(ProviderSettings, "price")
    budget: Money | None = setting(ProviderSettings, "budget")


class TemplateItem(_Section):
    text: str = Field(
        description="Prompt template: {name} is a variable from vars; {{ and }} are literal braces."
    )
    vars: dict[str, VarValues] = Field(
        default_factory=dict,
        description="Values of each variable; one prompt per combination.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Job parameters for these prompts."
    )
    meta: MetaValues = setting(TemplatePrompt, "meta")


class FileItem(_Section):
    file: str = Field(description="Prompt file, relative to the spec file's directory.")
    format: Literal["txt", "csv", "jsonl"] | None = Field(
        None,
        description="txt: a prompt per line ('#' lines ignored); csv: a column; jsonl: "
        'objects {"prompt": ..., "meta": {...}, other keys are parameters}. Default: from '
        "the extension (.csv, .jsonl/.ndjson, else txt).",
    )
    column: str | None = Field(
        None,
        description=f"csv: the prompt column. Default: {default_of(PromptFile, 'column')}.",
    )
    text: str | None = Field(
        None, description="csv: a prompt template whose variables are the row's columns."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Job parameters for these prompts."
    )
    meta: list[str] = setting(PromptFile, "meta")


def _prompt_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return _PLAIN
    if isinstance(value, dict):
        return _FILE if "file" in value else _TEMPLATE if "text" in value else None
    return None


PromptItem = Annotated[
    Annotated[str, Tag(_PLAIN), Field(min_length=1)]
    | Annotated[TemplateItem, Tag(_TEMPLATE)]
    | Annotated[FileItem, Tag(_FILE)],
    Discriminator(
        _prompt_kind,
        custom_error_type="prompt_item",
        custom_error_message="a prompt is text, a mapping with `text` (and `vars`), "
        "or a mapping with `file`",
    ),
]


class MatrixModel(BaseModel):
    """Every other key is a dimension: a list of values."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        frozen=True,
        json_schema_extra={
            "description": "Parameter matrix (GitHub Actions semantics): each key other "
            "than include/exclude lists values of one parameter; jobs take every "
            "combination. `provider` restricts the providers."
        },
    )
    __pydantic_extra__: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(init=False)

    include: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extend the combinations that match an entry, or add it as a new one.",
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="Remove the combinations that match an entry."
    )


class SeedRange(_Section):
    start: int = Field(0, description="First seed.")
    count: int = Field(ge=1, description="How many consecutive seeds.")


def _seeds_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return _SEED_LIST
    return _SEED_RANGE if isinstance(value, dict) else None


Seeds = Annotated[
    Annotated[list[int], Tag(_SEED_LIST), Field(min_length=1)]
    | Annotated[SeedRange, Tag(_SEED_RANGE)],
    Discriminator(
        _seeds_kind,
        custom_error_type="seeds",
        custom_error_message="seeds is a list of whole numbers or {start: ..., count: ...}",
    ),
]


class PollModel(_Section):
    """Each setting left out follows the API's documented advice where it has one (e.g.
    APIXO: start at 3 s; PixAI: never under 1.5 s), else the default named here."""

    initial: Duration | None = Field(
        None,
        description="First wait between status checks. Default: the API's advice, else "
        f"{_seconds(default_of(RunSettings, 'poll_initial'))}.",
    )
    max: Duration | None = Field(
        None,
        description="Longest wait between status checks. Default: the API's advice, else "
        f"{_seconds(default_of(RunSettings, 'poll_max'))}.",
    )
    factor: float | None = Field(
        None,
        ge=1.0,
        description="Each wait is the last one times this. Default: the API's advice, else "
        f"{default_of(RunSettings, 'poll_factor'):g}.",
    )


class RunModel(_Section):
    deadline: Duration = setting(RunSettings, "deadline")
    poll: PollModel = Field(
        default_factory=lambda: PollModel.model_validate({}), description="Status polling back-off."
    )
    http_timeout: Duration = setting(RunSettings, "http_timeout")
    retries: int = setting(RunSettings, "retries", ge=0)
    max_retry_after: Duration = setting(RunSettings, "max_retry_after")
    budget: Money | None = setting(RunSettings, "budget")
    currency: str = setting(RunSettings, "currency", min_length=1)
    lease: Duration = setting(RunSettings, "lease")


class WebhooksModel(_Section):
    host: str = setting(WebhookSettings, "host", min_length=1)
    port: int = setting(WebhookSettings, "port", ge=0, le=65535)
    public_url: str | None = setting(WebhookSettings, "public_url")


class SpecModel(_Section):
    """A pipeline spec: prompts, providers and parameters, expanded into jobs."""

    model_config = ConfigDict(title="pipeline spec")

    version: Literal[1] = Field(1, description="Spec format version; only 1 exists.")
    name: str | None = Field(
        None, min_length=1, description="Name of the run. Default: the spec file's stem."
    )
    output: OutputModel = Field(
        default_factory=lambda: OutputModel.model_validate({}), description="Where files go."
    )
    providers: dict[str, ProviderModel] = Field(
        min_length=1,
        description="The providers to run on; each key ([a-z0-9_-]+) names one, and is "
        "part of job ids and output paths.",
    )
    prompts: list[PromptItem] = Field(
        min_length=1,
        description="Prompts: text, templates {text, vars}, or files {file}.",
    )
    matrix: MatrixModel = Field(default_factory=MatrixModel)
    seeds: Seeds | None = setting(Spec, "seeds")
    repeats: int = setting(Spec, "repeats", ge=1)
    run: RunModel = Field(
        default_factory=lambda: RunModel.model_validate({}), description="Timing of the run."
    )
    webhooks: WebhooksModel = Field(
        default_factory=lambda: WebhooksModel.model_validate({}),
        description="The webhook receiver, for providers that call back (completion: webhook).",
    )
    manifest: str | None = setting(Spec, "manifest", min_length=1)
