"""The `hf` export: a clean folder in the Hugging Face imagefolder/videofolder layout.

    DEST/
      README.md              what `load_dataset(DEST)` gives (a `configs:` header)
      all.jsonl              every row; `file_name` relative to DEST
      images/metadata.jsonl  an imagefolder: `file_name` relative to images/
      images/<the output's path under the output folder>
      videos/metadata.jsonl  a videofolder, the same way
      files/...              outputs of any other type (listed in all.jsonl only)

Why not one folder: `datasets` picks ONE builder per dataset folder (from the most
common extension of its first config's files), and a folder builder resolves file paths
only for its own media type, so images and videos cannot be typed columns of one
config, nor two configs of one README. Each typed folder is therefore a dataset of its
own, and DEST's README makes `load_dataset(DEST)` the typed folder when the export has
one kind of media, else the table of every row.

Files are hard links to the originals (a copy where the destination is on another
filesystem or refuses links), never sidecars. DEST is built in a hidden sibling and
renamed into place; a non-empty DEST is replaced only when it is an earlier export
(``MARKER``) or with ``force``.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO

from pipeline.dataset.rows import KIND_FOLDERS, kind_of, safe_relative
from pipeline.errors import ExportError
from pipeline.fsio import fsync_dir

__all__ = ["MARKER", "Folder", "check_dest"]

MARKER = ".pipeline-export.json"
"""Written in every `hf` export: an earlier export may be replaced without ``force``."""

_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
"""Why a hard link can fail where a copy works: another filesystem, a filesystem without
links (FAT, some network shares), the kernel's protected_hardlinks, too many links."""


def check_dest(dest: Path, root: Path, *, force: bool, others: Collection[str | Path] = ()) -> None:
    """Refuse a DEST that would overwrite the outputs (under ``root``, or the ``others``
    output roots the manifest names) or a folder that is not ours."""
    where = dest.resolve()
    for folder in (root, *map(Path, others)):
        outputs = folder.resolve()
        if where == outputs or outputs in where.parents or where in outputs.parents:
            raise ExportError(
                f"{dest} overlaps the output folder {folder} (is it, is inside it or holds "
                "it): export to a folder beside it (an export links the output files, and "
                "replacing it removes what it holds)"
            )
    if dest.is_symlink():
        raise ExportError(f"{dest} is a symbolic link: give the folder itself")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a folder")
    if not force and not (dest / MARKER).is_file() and any(dest.iterdir()):
        raise ExportError(
            f"{dest} is not empty and is not an export of pipeline: choose another "
            "folder, or pass --force to replace it"
        )


class Folder:
    """An `hf` export being built in a hidden sibling of ``dest``."""

    def __init__(
        self, dest: Path, root: Path, *, force: bool, others: Collection[str | Path] = ()
    ) -> None:
        check_dest(dest, root, force=force, others=others)
        self.dest, self.root = dest, root
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.building = dest.parent / f".{dest.name}.building-{secrets.token_hex(4)}"
        self.building.mkdir()
        self.kinds: Counter[str] = Counter()
        self.linked = self.copied = 0
        self._can_link = True

    def place(self, path: str, size: int, *, root: str | None = None) -> str | None:
        """Link (or copy) the output at ``path`` under the output folder (``root``, when
        another runner wrote it under its own) into its kind's folder; its path relative
        to DEST, or None when it is not on disk as recorded (gone, changed size, not a
        regular file, or a path leaving the output folder)."""
        if not safe_relative(path):
            return None
        source = (self.root if root is None else Path(root)) / path
        try:
            info = source.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return None
        kind = kind_of(path)
        placed = f"{KIND_FOLDERS[kind]}/{path}"
        target = self.building / placed
        target.parent.mkdir(parents=True, exist_ok=True)
        self._link_or_copy(source, target)
        self.kinds[kind] += 1
        return placed

    def _link_or_copy(self, source: Path, target: Path) -> None:
        if self._can_link:
            try:
                os.link(source, target)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                self._can_link = exc.errno not in {errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}
            else:
                self.linked += 1
                return
        shutil.copy2(source, target)  # contents and times; the original is only read
        self.copied += 1

    def write(self, relative: str, fill: Callable[[IO[str]], object]) -> None:
        """A text file of the export, written and fsynced."""
        path = self.building / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as file:
            fill(file)
            file.flush()
            os.fsync(file.fileno())

    def mark(self, about: dict[str, object]) -> None:
        self.write(MARKER, lambda file: json.dump(about, file, indent=2, sort_keys=True))

    def commit(self) -> None:
        """Put the finished folder in DEST's place (an earlier DEST is removed after)."""
        fsync_dir(self.building)
        replaced = None
        if self.dest.exists():
            replaced = self.dest.parent / f".{self.dest.name}.replaced-{secrets.token_hex(4)}"
            os.rename(self.dest, replaced)
        os.rename(self.building, self.dest)
        fsync_dir(self.dest.parent)
        if replaced is not None:
            shutil.rmtree(replaced)

    def abort(self) -> None:
        shutil.rmtree(self.building, ignore_errors=True)


def readme(
    *,
    name: str,
    root: Path,
    rows: int,
    kinds: Counter[str],
    columns: list[str],
    states: str,
    fingerprint: str,
) -> tuple[str, str]:
    """README.md of an export and what its default config is (a folder or the table).

    ``fingerprint`` (of the rows) goes in the config's description: `datasets` keys its
    cache for a README's config by the config, not by the files it names, so without it
    a re-export, or another export in a folder of the same name, would load stale rows."""
    typed = [kind for kind in ("image", "video") if kinds[kind]]
    default = f"{KIND_FOLDERS[typed[0]]}" if len(typed) == 1 and not kinds["file"] else "all"
    data_files = f"{default}/**" if default != "all" else "all.jsonl"
    loads = {
        "image": "an imagefolder: an `image` column (PIL images) and the columns below",
        "video": (
            "a videofolder: a `video` column (decoded with torchcodec; "
            '`.cast_column("video", datasets.Video(decode=False))` gives paths) and the '
            "columns below"
        ),
    }
    table = "\n".join(
        f'| `{KIND_FOLDERS[kind]}/` | {kinds[kind]} | `load_dataset("DIR/{KIND_FOLDERS[kind]}")`'
        f": {loads[kind]} |"
        for kind in typed
    )
    others = (
        f"\n{kinds['file']} other files are in `files/`, listed in `all.jsonl` only.\n"
        if kinds["file"]
        else ""
    )
    default_text = (
        f"the `{default}/` folder above"
        if default != "all"
        else "`all.jsonl`: every row, with `file_name` relative to DIR and a `kind` column "
        "(a table: a folder builder types one kind of media only)"
    )
    text = f"""---
configs:
- config_name: default
  data_files: "{data_files}"
  description: "pipeline export {fingerprint}"
---
# {name}

{rows} files from the output folder `{root}` (jobs {states}), exported by
`pipeline export --format hf`. DIR below is this folder.

| folder | rows | load with |
|---|---|---|
{table}
{others}
`load_dataset("DIR")` gives {default_text}.

Columns: {", ".join(f"`{column}`" for column in columns)}.

The files are hard links to the originals where the filesystem allows: replace a file
rather than editing it in place. Sidecars (`.json`) are not here; the output folder
keeps them.
"""
    return text, default
