"""`pipeline export`: the manifest of an output folder as a dataset.

Formats: ``jsonl`` (the manifest as it is, one job a line: unchanged), and one row per
output file with the same columns in ``hf`` (a folder `datasets` loads, see ``hf.py``),
``csv`` and ``parquet``. Rows are the jobs of the spec's last run in the chosen states
(``done`` by default), as ``pipeline status`` counts them.

Two passes, so a million jobs are never held: the first streams the manifest, places
files (``hf``) and spools raw rows to a temporary file while learning each column's type;
the second writes the rows with one type per column.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, cast

from pipeline import __version__
from pipeline.dataset.hf import Folder, readme
from pipeline.dataset.rows import (
    FIXED,
    HEAD,
    KIND_FOLDERS,
    ColumnTypes,
    normalise,
    record_rows,
)
from pipeline.errors import ExportError
from pipeline.fsio import write_atomic_text
from pipeline.manifest import Manifest
from pipeline.models import JobState

__all__ = ["FORMATS", "Exported", "export_dataset", "parse_states"]

FORMATS = ("jsonl", "hf", "csv", "parquet")
MISSING_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Exported:
    """What an export wrote."""

    format: str
    dest: Path | None  # None: written to a stream
    rows: int
    columns: tuple[str, ...] = ()
    kinds: Mapping[str, int] = field(default_factory=dict)  # hf: files per kind
    linked: int = 0  # hf: files hard-linked to the originals
    copied: int = 0  # hf: files copied (another filesystem, or no links there)
    missing: tuple[str, ...] = ()  # hf: the first outputs not on disk as recorded
    missing_count: int = 0
    not_in_spec: int = 0  # jobs in the chosen states that the spec no longer lists
    default: str | None = None  # hf: what `load_dataset(dest)` gives: images, videos, all


def parse_states(states: Iterable[str | JobState] | None) -> frozenset[JobState]:
    """The chosen states (``all`` for every one; a string is comma-separated); ``done``
    when none are given."""
    if states is None:
        return frozenset({JobState.DONE})
    if isinstance(states, str):
        states = states.split(",")
    chosen: set[JobState] = set()
    for state in states:
        if state == "all":
            chosen.update(JobState)
            continue
        try:
            chosen.add(JobState(state.strip()))
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise ExportError(f"no state {state!r}: one of {names}, or all") from None
    if not chosen:
        raise ExportError("no state chosen: give one or more, e.g. done,failed")
    return frozenset(chosen)


def export_dataset(
    manifest: Manifest,
    *,
    format: str,
    dest: Path | TextIO,
    states: Iterable[str | JobState] | None = None,
    columns: Sequence[str] | None = None,
    force: bool = False,
) -> Exported:
    """Export ``manifest``'s output folder to ``dest`` (a path; a text stream for
    ``jsonl`` and ``csv``). Raises ``ExportError`` for a request it cannot honour."""
    if format not in FORMATS:
        raise ExportError(f"no format {format!r}: one of {', '.join(FORMATS)}")
    if format == "jsonl":
        if states is not None or columns is not None:
            raise ExportError(
                "--state and --columns are for hf, csv and parquet: jsonl is the whole "
                "manifest as it is, one job a line"
            )
        return _jsonl(manifest, dest)
    wanted = parse_states(states)
    if isinstance(columns, str):
        columns = columns.split(",")
    chosen = None if columns is None else list(dict.fromkeys(c.strip() for c in columns))
    if format == "parquet":
        from pipeline.dataset.parquet import require_pyarrow

        require_pyarrow()
    if format in {"hf", "parquet"} and not isinstance(dest, Path):
        what = "a folder" if format == "hf" else "a file"
        raise ExportError(f"--format {format} writes {what}: name it with -o")
    manifest.limit_to_spec()
    outside = sum(
        n
        for by_state in manifest.outside_spec_counts().values()
        for state, n in by_state.items()
        if JobState(state) in wanted
    )
    if format == "hf" and isinstance(dest, Path):
        return _hf(manifest, dest, wanted, chosen, force=force, outside=outside)
    return _table(manifest, format, dest, wanted, chosen, outside=outside)


def _jsonl(manifest: Manifest, dest: Path | TextIO) -> Exported:
    if not isinstance(dest, Path):
        return Exported("jsonl", None, manifest.export_jsonl(dest))
    lines = 0

    def fill(file: IO[str]) -> None:
        nonlocal lines
        lines = manifest.export_jsonl(cast(TextIO, file))

    write_atomic_text(dest, fill)
    return Exported("jsonl", dest, lines)


# -- the two passes ----------------------------------------------------------------------


@dataclass
class _Spooled:
    """The first pass: raw rows in a temporary file, and what was learnt of them."""

    file: IO[str]
    types: ColumnTypes = field(default_factory=ColumnTypes)
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    missing_count: int = 0


def _spool(
    manifest: Manifest, states: frozenset[JobState], file: IO[str], folder: Folder | None
) -> _Spooled:
    spooled = _Spooled(file)
    for record in manifest.iter_records(states=states, with_outputs=True):
        roots = [output.root for output in record.outputs] or [None]
        for row, root in zip(record_rows(record), roots, strict=True):
            if folder is None and root is not None:  # under another runner's output root
                row["file_name"] = str(Path(root) / row["file_name"])
            if folder is not None:
                if row["file_name"] is None:
                    continue  # a folder dataset lists files; a job without one has no row
                placed = folder.place(row["file_name"], row["size"], root=root)
                if placed is None:
                    spooled.missing_count += 1
                    if len(spooled.missing) < MISSING_SHOWN:
                        spooled.missing.append(row["file_name"])
                    continue
                row["file_name"] = placed
            spooled.types.add(row)
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            spooled.rows += 1
    return spooled


def _keys(spooled: _Spooled, columns: list[str] | None, *, need_file: bool) -> list[str]:
    """The keyed columns to write, in order: the named ``columns``, or the leading ones
    (file, prompt, provider, model, seed) and every other that is not null in some row
    (all of the manifest's own when there is no row)."""
    named = spooled.types.names()
    if columns is None:
        if not spooled.rows:
            return [key for key in named if key in FIXED]
        keys = [key for key in named if key in HEAD or spooled.types.present_in(key, "all")]
    else:
        by_name = {name: key for key, name in named.items()}
        for column in columns:
            if column not in by_name:
                listed = ", ".join(named.values())
                raise ExportError(f"no column {column!r}: the columns here are {listed}")
        keys = [by_name[column] for column in columns]
    if need_file and "file_name" not in keys:
        keys.insert(0, "file_name")
    return keys


def _values(
    spooled: _Spooled, keys: Sequence[str], *, kind: str | None = None
) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Each spooled row (of one ``kind``, when given) and its values for ``keys``."""
    spooled.file.seek(0)
    types = {key: spooled.types.type_of(key) for key in keys}
    for line in spooled.file:
        raw = json.loads(line)
        if kind is None or raw.get("kind") == kind:
            yield raw, [normalise(raw.get(key), types[key]) for key in keys]


def _names(spooled: _Spooled, keys: Sequence[str]) -> list[str]:
    named = spooled.types.names()
    return [named[key] for key in keys]


# -- formats -----------------------------------------------------------------------------


def _table(
    manifest: Manifest,
    format: str,
    dest: Path | TextIO,
    states: frozenset[JobState],
    columns: list[str] | None,
    *,
    outside: int,
) -> Exported:
    with tempfile.TemporaryFile("w+", encoding="utf-8") as file:
        spooled = _spool(manifest, states, file, None)
        keys = _keys(spooled, columns, need_file=False)
        names = _names(spooled, keys)
        rows = (values for _, values in _values(spooled, keys))
        if format == "parquet" and isinstance(dest, Path):
            from pipeline.dataset.parquet import write_parquet

            kinds = [spooled.types.type_of(key) for key in keys]
            write_parquet(dest, list(zip(names, kinds, strict=True)), rows)
        elif isinstance(dest, Path):
            write_atomic_text(dest, lambda out: _write_csv(out, names, rows))
        else:
            _write_csv(dest, names, rows)
    target = dest if isinstance(dest, Path) else None
    return Exported(format, target, spooled.rows, tuple(names), not_in_spec=outside)


def _write_csv(out: IO[str], names: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(["" if value is None else value for value in row] for row in rows)


def _write_jsonl(
    out: IO[str],
    *,
    spooled: _Spooled,
    keys: Sequence[str],
    kind: str | None = None,
    strip: str = "",
) -> None:
    """JSON lines of the rows (of ``kind``), ``file_name`` without the prefix ``strip``."""
    names = _names(spooled, keys)
    for _, values in _values(spooled, keys, kind=kind):
        row = dict(zip(names, values, strict=True))
        row["file_name"] = str(row["file_name"]).removeprefix(strip)
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _hf(
    manifest: Manifest,
    dest: Path,
    states: frozenset[JobState],
    columns: list[str] | None,
    *,
    force: bool,
    outside: int,
) -> Exported:
    folder = Folder(dest, manifest.root.resolve(), force=force, others=manifest.output_roots())
    try:
        with tempfile.TemporaryFile("w+", encoding="utf-8") as file:
            spooled = _spool(manifest, states, file, folder)
            names, default = _fill(folder, manifest, spooled, states, columns)
        folder.commit()
    except BaseException:
        folder.abort()
        raise
    return Exported(
        "hf",
        dest,
        spooled.rows,
        tuple(names),
        kinds=dict(folder.kinds),
        linked=folder.linked,
        copied=folder.copied,
        missing=tuple(spooled.missing),
        missing_count=spooled.missing_count,
        not_in_spec=outside,
        default=default,
    )


def _fill(
    folder: Folder,
    manifest: Manifest,
    spooled: _Spooled,
    states: frozenset[JobState],
    columns: list[str] | None,
) -> tuple[list[str], str]:
    """The metadata files, README and marker of an `hf` export whose files are placed;
    its column names and default config."""
    chosen = ", ".join(sorted(state.value for state in states))
    if not spooled.rows:
        gone = f" ({spooled.missing_count} recorded but missing)" if spooled.missing_count else ""
        raise ExportError(f"nothing to export: no output file on disk for jobs {chosen}{gone}")
    keys = _keys(spooled, columns, need_file=True)
    folder.write("all.jsonl", functools.partial(_write_jsonl, spooled=spooled, keys=keys))
    for kind in ("image", "video"):
        if folder.kinds[kind]:
            own = keys if columns is not None else _present(spooled, keys, kind)
            prefix = f"{KIND_FOLDERS[kind]}/"
            write = functools.partial(
                _write_jsonl, spooled=spooled, keys=own, kind=kind, strip=prefix
            )
            folder.write(f"{prefix}metadata.jsonl", write)
    names = _names(spooled, keys)
    with (folder.building / "all.jsonl").open("rb") as table:
        fingerprint = hashlib.file_digest(table, "sha256").hexdigest()[:16]
    text, default = readme(
        name=manifest.meta().get("spec_name") or manifest.root.name,
        root=folder.root,
        rows=spooled.rows,
        kinds=folder.kinds,
        columns=names,
        states=chosen,
        fingerprint=fingerprint,
    )
    folder.write("README.md", lambda out: out.write(text))
    folder.mark(
        {"format": "hf", "pipeline": __version__, "source": str(folder.root),
         "rows": spooled.rows}
    )  # fmt: skip
    return names, default


def _present(spooled: _Spooled, keys: Sequence[str], kind: str) -> list[str]:
    """``keys`` without the columns null in every row of ``kind`` (a video's duration
    in the images' metadata); the leading ones (file, prompt, provider, model, seed)
    stay."""
    return [key for key in keys if key in HEAD or spooled.types.present_in(key, kind)]
