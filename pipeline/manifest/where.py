"""Which store holds a run's manifest: ``manifest.sqlite`` in the output root, or the
PostgreSQL database the spec names (``manifest: postgresql://…``), which a pointer file
in the output root (``manifest.url``) records so that ``pipeline status DIR`` finds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ManifestError
from pipeline.fsio import write_atomic_text
from pipeline.manifest.store import Manifest, find_manifest

if TYPE_CHECKING:
    from pipeline.manifest.postgres import PgLocation, PgManifest

__all__ = [
    "POINTER_NAME",
    "SCHEMES",
    "has_manifest",
    "is_database_url",
    "open_folder",
    "open_run",
    "postgres_module",
]

POINTER_NAME = "manifest.url"
SCHEMES = ("postgresql", "postgres")


def is_database_url(text: str | Path | None) -> bool:
    """Whether a ``manifest`` setting names a PostgreSQL database (else a folder)."""
    return isinstance(text, str) and urlsplit(text).scheme in SCHEMES


def postgres_module() -> ModuleType:
    """``manifest.postgres``, imported only when a PostgreSQL URL is used: psycopg is the
    ``postgres`` extra, and a missing one is a ``ManifestError`` naming the pip command."""
    try:
        from pipeline.manifest import postgres
    except ImportError as exc:
        raise ManifestError(
            f"a PostgreSQL manifest needs the psycopg driver ({exc.name} is missing): "
            "pip install 'genmedia-pipeline[postgres]'"
        ) from exc
    return postgres


def _pg() -> type[PgManifest]:
    pg: type[PgManifest] = postgres_module().PgManifest
    return pg


def open_run(
    root: Path,
    *,
    url: str | None,
    run: str,
    readonly: bool = False,
    spec_name: str | None = None,
    spec_path: str | Path | None = None,
) -> Manifest:
    """The manifest of run ``run`` with output root ``root``: in the database ``url``
    when given (a writer records it in ``root/manifest.url``), else in ``root``."""
    if url is None:
        return Manifest.open(root, readonly=readonly, spec_name=spec_name, spec_path=spec_path)
    manifest = _pg().open_url(
        url, run=run, root=root, readonly=readonly, spec_name=spec_name, spec_path=spec_path
    )
    if not readonly:
        try:
            _write_pointer(root, manifest.pg_location, run)
        except BaseException:
            manifest.close()
            raise
    return manifest


def open_folder(root: Path) -> Manifest:
    """The manifest of output folder ``root``, read-only: its ``manifest.sqlite``, or the
    shared run its ``manifest.url`` names."""
    root = Path(root)
    pointer = root / POINTER_NAME
    if find_manifest(root) is None and pointer.is_file():
        url, run = _read_pointer(pointer)
        return _pg().open_url(url, run=run, root=root, readonly=True)
    return Manifest.open(root, readonly=True)


def has_manifest(root: Path) -> bool:
    """Whether output folder ``root`` holds a manifest or points at one."""
    return find_manifest(root) is not None or (Path(root) / POINTER_NAME).is_file()


def _write_pointer(root: Path, location: PgLocation, run: str) -> None:
    """Record where the shared manifest is, without its password (a reader takes it
    from ``PGPASSWORD`` or ``~/.pgpass``, as every PostgreSQL client does)."""
    parts = urlsplit(location.conninfo)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    url = urlunsplit(parts._replace(netloc=netloc))
    text = json.dumps({"url": url, "run": run, "schema": location.schema}, indent=1) + "\n"
    path = root / POINTER_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomic_text(path, lambda file: file.write(text))
    except OSError as exc:
        raise ManifestError(f"cannot write {path}: {exc}") from exc


def _read_pointer(pointer: Path) -> tuple[str, str]:
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
        return str(data["url"]), str(data["run"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(
            f"{pointer} does not say where the shared manifest is ({exc}); give the spec "
            "file instead, whose `manifest:` names it"
        ) from exc
