"""The `parquet` export, written with pyarrow (the optional `pipeline[parquet]` extra).
pyarrow lives only here."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.dataset.rows import ColumnType
from pipeline.errors import ExportError
from pipeline.fsio import replace_durably

__all__ = ["require_pyarrow", "write_parquet"]

BATCH = 10_000
"""Rows per row group: the file is written batch by batch, never held whole."""


def require_pyarrow() -> None:
    """Fail before any work when pyarrow is not installed, naming the command."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            "--format parquet needs pyarrow: pip install 'genmedia-pipeline[parquet]' "
            "(or pyarrow); --format csv needs nothing"
        ) from exc


def write_parquet(
    path: Path, columns: Sequence[tuple[str, ColumnType]], rows: Iterable[Sequence[Any]]
) -> None:
    """Write ``rows`` (values in the order of ``columns``) to ``path`` atomically: a
    temporary file beside it, fsynced, renamed over it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "string": pa.string(),
        "null": pa.string(),  # a column asked for by name that is null in every row
    }
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            rows_iter = iter(rows)
            while batch := list(itertools.islice(rows_iter, BATCH)):
                arrays = [list(values) for values in zip(*batch, strict=True)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        with tmp.open("rb") as file:
            os.fsync(file.fileno())
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
