"""Room: the spec file → a validated, frozen ``models.Spec`` (YAML with line marks,
``${VAR}`` expansion, pydantic schema, conversion and checks). Pure: no network or
database."""

from pipeline.spec.load import load_spec, spec_json_schema
from pipeline.spec.source import MAX_SHOWN, combined, format_path

__all__ = ["MAX_SHOWN", "combined", "format_path", "load_spec", "spec_json_schema"]
