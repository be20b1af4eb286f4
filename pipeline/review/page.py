"""The contact sheet as one static HTML page: a CSS grid whose tiles carry their own
coordinates (so they stream in manifest order), thumbnails and players linked relative
to the page, a few lines of inline script for the filters, and a Content-Security-Policy
that lets the page load nothing but local files and that script. Every piece of user or
provider text goes through ``esc``."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pipeline.models import JobRecord, JobState, Output
from pipeline.redact import scrub
from pipeline.review.layout import Layout, Placer, dimension_value, label_of

__all__ = ["write_page"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".m4v"})
AUDIO_SUFFIXES = frozenset({".mp3", ".wav", ".ogg", ".flac", ".m4a"})
CAPTION_CHARS = 40

CSS = """
:root { --tile: 11rem; --line: #d0d4d9; --ink: #1d2125; --soft: #5c6670; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.35 system-ui, sans-serif; color: var(--ink); background: #f4f5f7; }
header { padding: 12px 16px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 4px; }
.summary { margin: 0 0 8px; color: var(--soft); }
form { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: center; }
fieldset { border: 0; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
legend { float: left; font-weight: 600; margin-right: 8px; }
label { white-space: nowrap; cursor: pointer; }
#shown { color: var(--soft); }
.sheet { display: grid; gap: 6px; padding: 12px 16px; align-items: start; width: max-content; }
.corner, .col-head, .row-head { font-weight: 600; padding: 6px; }
.corner { color: var(--soft); font-weight: 400; }
.col-head { border-bottom: 2px solid var(--line); }
.row-head { border-right: 2px solid var(--line); overflow-wrap: anywhere; display: -webkit-box;
  -webkit-box-orient: vertical; -webkit-line-clamp: 8; overflow: hidden; }
.cell { background: #fff; border: 1px solid var(--line); border-radius: 6px; align-self: stretch;
  margin: -3px; }
.tile { margin: 0; padding: 4px; border-radius: 4px; background: #fff;
  border: 1px solid var(--line); min-width: 0; position: relative; }
.media { display: flex; flex-wrap: wrap; gap: 2px; }
.media > a, .media > video, .media > audio { flex: 1 1 45%; min-width: 0; }
.media img, .media video { display: block; width: 100%; height: 9rem; object-fit: contain;
  background: #e9ecef; }
.media > :only-child { flex-basis: 100%; }
figcaption { margin-top: 3px; color: var(--soft); font-size: 12px; overflow-wrap: anywhere; }
.state { display: inline-block; padding: 0 5px; border-radius: 3px; background: #e3e6ea;
  color: var(--ink); font-size: 11px; margin-right: 4px; }
.s-done .state { background: #d5f0dc; }
.s-failed, .s-unknown, .s-timed_out, .s-cancelled { background: #fff4f4; border-color: #e8a5a5; }
.s-failed .state, .s-unknown .state, .s-timed_out .state, .s-cancelled .state {
  background: #f6caca; }
.reason { margin: 4px 0 0; color: #8a1c1c; font-size: 12px; overflow-wrap: anywhere;
  max-height: 8.5em; overflow: auto; white-space: pre-wrap; }
.waiting { height: 9rem; display: flex; align-items: center; justify-content: center;
  color: var(--soft);
  background: repeating-linear-gradient(45deg, #f4f5f7 0 8px, #eceef1 8px 16px); }
.empty { padding: 24px 16px; color: var(--soft); }
"""

SCRIPT = """
"use strict";
(() => {
  const form = document.getElementById("filters");
  const hide = document.getElementById("hidden-by-filters");
  const shown = document.getElementById("shown");
  const tiles = document.getElementsByClassName("tile");
  const apply = () => {
    const off = { state: new Set(), provider: new Set() };
    const rules = [];
    for (const box of form.querySelectorAll("input[type=checkbox]")) {
      if (!box.checked) {
        off[box.name].add(box.value);
        rules.push(`.tile[data-${box.name}="${CSS.escape(box.value)}"]`);
      }
    }
    hide.textContent = rules.length ? `${rules.join(",\\n")} { display: none; }` : "";
    let n = 0;
    for (const tile of tiles) {
      if (!off.state.has(tile.dataset.state) && !off.provider.has(tile.dataset.provider)) n++;
    }
    shown.textContent = `${n} of ${tiles.length} shown`;
  };
  form.addEventListener("change", apply);
  apply();
})();
"""


def esc(text: Any) -> str:
    """Text made safe for HTML content and quoted attributes."""
    return html.escape(str(text), quote=True)


def policy() -> str:
    """Local files and our own script only: nothing from the network, even if some text
    escaped its escaping."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return (
        "default-src 'none'; img-src 'self' file:; media-src 'self' file:; "
        f"style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
        "base-uri 'none'; form-action 'none'"
    )


class Links:
    """Output paths (relative to the output root) as URLs relative to the page."""

    def __init__(self, root: Path, page: Path) -> None:
        self.page = page
        self.prefix = self._prefix(root)

    def _prefix(self, root: Path | str) -> PurePosixPath:
        relative = os.path.relpath(os.path.abspath(root), os.path.abspath(self.page.parent))
        return PurePosixPath(Path(relative).as_posix())

    def url(self, output: Output) -> str:
        """The file's URL; one another runner wrote under its own root is linked there."""
        prefix = self.prefix if output.root is None else self._prefix(output.root)
        return urllib.parse.quote(str(prefix / output.path))


def write_page(
    out: IO[str],
    records: Iterable[JobRecord],
    layout: Layout,
    links: Links,
    *,
    title: str,
    states: Iterable[JobState],
) -> int:
    """Write the page for ``records`` (the same jobs, in the same order, that ``layout``
    was learnt from); return how many tiles it holds."""
    write_head(out, layout, title)
    write_grid_frame(out, layout)
    placer = Placer(layout)
    captioned = layout.captioned()
    tiles = 0
    for record in records:
        slot = placer.slot(record)
        if slot is not None:
            out.write(tile(record, slot, captioned, links))
            tiles += 1
    out.write("</main>\n")
    if placer.dropped:
        out.write(
            f'<p class="empty">{placer.dropped} job(s) changed while the sheet was written '
            "(a run is going on): run `pipeline report` again to see them.</p>\n"
        )
    if not layout.total:
        listed = ", ".join(s.value for s in states)
        out.write(f'<p class="empty">No jobs to show ({esc(listed)}).</p>\n')
    out.write(f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
    return tiles


def write_head(out: IO[str], layout: Layout, title: str) -> None:
    counts = ", ".join(f"{esc(state)} {n}" for state, n in sorted(layout.states.items()))
    out.write(
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(policy())}">\n'
        f"<title>{esc(title)} — contact sheet</title>\n"
        f'<style>{CSS}</style>\n<style id="hidden-by-filters"></style>\n</head>\n<body>\n'
        f"<header>\n<h1>{esc(title)}</h1>\n"
        f'<p class="summary">{layout.total} job(s): {counts or "none"} · rows: '
        f"{esc(layout.rows.name)} · columns: {esc(layout.cols.name)}</p>\n"
        '<form id="filters">\n'
    )
    write_filter(out, "state", "State", layout.states)
    write_filter(out, "provider", "Provider", layout.providers)
    out.write(f'<output id="shown">{layout.total} of {layout.total} shown</output>\n')
    out.write("</form>\n</header>\n")


def write_filter(out: IO[str], name: str, legend: str, counts: dict[str, int]) -> None:
    out.write(f"<fieldset><legend>{legend}</legend>\n")
    for value, n in counts.items():
        out.write(
            f'<label><input type="checkbox" name="{name}" value="{esc(value)}" checked> '
            f"{esc(value)} ({n})</label>\n"
        )
    out.write("</fieldset>\n")


def write_grid_frame(out: IO[str], layout: Layout) -> None:
    """The grid, its headers and the cell backgrounds; the tiles follow."""
    columns = f"minmax(8rem, 16rem) repeat({layout.width}, var(--tile))"
    out.write(f'<main class="sheet" style="grid-template-columns: {columns}">\n')
    corner = f"{esc(layout.rows.name)} \\ {esc(layout.cols.name)}"
    out.write(f'<div class="corner" style="grid-area: 1 / 1">{corner}</div>\n')
    for c, label in enumerate(layout.cols.labels):
        area = f"1 / {layout.col_start[c]} / span 1 / span {layout.across[c]}"
        out.write(
            f'<div class="col-head" style="grid-area: {area}" title="{esc(label)}">'
            f"{esc(label)}</div>\n"
        )
    for r, label in enumerate(layout.rows.labels):
        area = f"{layout.row_start[r]} / 1 / span {layout.down[r]} / span 1"
        out.write(
            f'<div class="row-head" style="grid-area: {area}" title="{esc(label)}">'
            f"{esc(label)}</div>\n"
        )
    for r, c in layout.cells:
        area = (
            f"{layout.row_start[r]} / {layout.col_start[c]} / "
            f"span {layout.down[r]} / span {layout.across[c]}"
        )
        out.write(f'<div class="cell" style="grid-area: {area}"></div>\n')


def tile(record: JobRecord, slot: tuple[int, int], captioned: list[str], links: Links) -> str:
    job, state = record.job, record.state.value
    parts = [
        f'<figure class="tile s-{esc(state)}" data-state="{esc(state)}" '
        f'data-provider="{esc(job.provider)}" style="grid-area: {slot[0]} / {slot[1]}" '
        f'title="{esc(hover_text(record))}">\n'
    ]
    if record.outputs:
        parts.append('<div class="media">')
        parts.extend(media(output, links) for output in record.outputs)
        parts.append("</div>\n")
    elif record.state is not JobState.DONE:
        parts.append(f'<div class="waiting">{esc(state)}</div>\n')
    parts.append(f'<figcaption><span class="state">{esc(state)}</span>')
    parts.append(esc(caption(record, captioned)))
    if record.error:
        where = f"{record.failure}: " if record.failure else ""
        parts.append(f'<p class="reason">{esc(where + scrub(record.error))}</p>')
    parts.append("</figcaption>\n</figure>\n")
    return "".join(parts)


def media(output: Output, links: Links) -> str:
    """A thumbnail linked to the full file, an inline player, or a plain link."""
    url = esc(links.url(output))
    name = esc(PurePosixPath(output.path).name)
    kind = (output.content_type or "").split("/", 1)[0]
    suffix = PurePosixPath(output.path).suffix.lower()
    if kind == "video" or suffix in VIDEO_SUFFIXES:
        return f'<video controls preload="metadata" src="{url}" title="{name}"></video>'
    if kind == "audio" or suffix in AUDIO_SUFFIXES:
        return f'<audio controls preload="metadata" src="{url}" title="{name}"></audio>'
    if kind == "image" or suffix in IMAGE_SUFFIXES:
        return f'<a href="{url}"><img loading="lazy" src="{url}" alt="{name}"></a>'
    return f'<a href="{url}">{name}</a>'


def caption(record: JobRecord, captioned: list[str]) -> str:
    """The fields that vary within a cell, shortened: ``seed 7 · aspect_ratio 16:9``."""
    values = []
    for name in captioned:
        value = dimension_value(record, name)
        text = label_of(value)
        if len(text) > CAPTION_CHARS:
            text = text[: CAPTION_CHARS - 1] + "…"
        values.append(f"{name} {text}")
    return " · ".join(values)


def hover_text(record: JobRecord) -> str:
    """Everything about a job, one line each, for the tile's tooltip."""
    job = record.job
    lines = [f"job {job.id}", f"provider: {job.provider}"]
    if job.model:
        lines.append(f"model: {job.model}")
    state = record.state.value + (f" ({record.failure})" if record.failure else "")
    lines.append(f"state: {state}")
    if "prompt" in job.params:
        lines.append(f"prompt: {job.prompt}")
    lines.extend(
        f"{name}: {label_of(value)}" for name, value in sorted(job.params.items())
        if name != "prompt"
    )  # fmt: skip
    lines.extend(f"meta.{name}: {label_of(value)}" for name, value in sorted(job.meta.items()))
    if job.replicate:
        lines.append(f"replicate: {job.replicate}")
    if record.remote_id:
        lines.append(f"remote id: {record.remote_id}")
    lines.extend(f"output: {output.path}" for output in record.outputs)
    if record.error:
        lines.append(f"reason: {scrub(record.error)}")
    return "\n".join(lines)
