"""The contact sheet's HTML (`pipeline report`): one tile per job on a grid of two chosen
dimensions, outputs linked relative to the page, user text escaped everywhere, failures
with their reasons, nothing fetched from outside. The browser's view of the same page is
in test_report_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

import pipeline
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.models import Job, JobRecord, JobState, Output

S = JobState
XSS = "<img src=x onerror=alert(1)> & \"quotes\" 'too'"
PROVIDERS = ("pixai", "acedata")
PROMPTS = ("a fox in the snow", XSS)


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element] = []
        self.text = ""

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.walk()

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


VOID = {"meta", "img", "input", "br", "link", "source"}


class Tree(HTMLParser):
    """A forgiving DOM of the page (the stdlib parser), enough to count and read tiles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.here = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.here)
        self.here.children.append(element)
        if tag not in VOID:
            self.here = element

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.here
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.here = node.parent

    def handle_data(self, data: str) -> None:
        self.here.text += data


def parse(text: str) -> Element:
    tree = Tree()
    tree.feed(text)
    return tree.root


def tiles(doc: Element) -> list[Element]:
    return [e for e in doc.walk() if "tile" in e.classes()]


def job(prompt: str, provider: str, seed: int, **params: object) -> Job:
    index = PROMPTS.index(prompt) if prompt in PROMPTS else 9
    return Job(
        id=f"{provider}-{index}-{seed}",
        provider=provider,
        model="m1",
        params={"prompt": prompt, "seed": seed, **params},
        prompt_slug="slug",
    )


def walk(m: Manifest, job_id: str, *states: JobState) -> None:
    current = m.get(job_id)
    assert current is not None
    before = current.state
    for to in states:
        assert m.transition(job_id, to, expect=before, remote_id="r-" + job_id)
        before = to


def finish(m: Manifest, j: Job, root: Path, name: str, body: bytes, kind: str) -> None:
    path = f"{j.provider}/{name}"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(body)
    walk(m, j.id, S.SUBMITTING, S.SUBMITTED, S.SUCCEEDED, S.DOWNLOADING)
    output = Output(j.id, 0, path, len(body), "0" * 64, "https://cdn.example/x", kind)
    assert m.finish(j.id, [output])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two prompts (one hostile) x two providers x two seeds, all done (PNG for pixai, MP4
    for acedata, in names that need quoting), plus one failed and one unknown job."""
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="sheet") as m:
        done = [
            job(p, provider, seed, aspect_ratio="1:1")
            for p in PROMPTS
            for provider in PROVIDERS
            for seed in (1, 2)
        ]
        failed = job("a fox in the snow", "pixai", 3, aspect_ratio="16:9")
        unknown = job(XSS, "acedata", 3, aspect_ratio="16:9")
        m.add_jobs([*done, failed, unknown])
        for n, j in enumerate(done):
            if j.provider == "pixai":
                finish(m, j, root, f"seed {n} #{n}.png", b"\x89PNG fake", "image/png")
            else:
                finish(m, j, root, f"clip {n}.mp4", b"\0\0\0 ftypisom", "video/mp4")
        walk(m, failed.id, S.SUBMITTING, S.SUBMITTED)
        m.transition(
            failed.id, S.FAILED, expect=S.SUBMITTED, error="content policy: <b>no</b> foxes",
            failure="remote",
        )  # fmt: skip
        walk(m, unknown.id, S.SUBMITTING)
        m.transition(unknown.id, S.UNKNOWN, expect=S.SUBMITTING, error="connection reset")
    return root


def render(root: Path, **options: object) -> tuple[Path, str]:
    dest = pipeline.report(root, **options)  # type: ignore[arg-type]
    return dest, dest.read_text(encoding="utf-8")


# -- the grid ----------------------------------------------------------------------------


def test_one_tile_per_job_on_a_prompt_by_provider_grid(root: Path) -> None:
    dest, text = render(root)
    assert dest == root / "report.html"
    doc = parse(text)
    found = tiles(doc)
    assert len(found) == 10
    areas = [t.attrs["style"] for t in found]
    assert len(set(areas)) == 10, "two tiles share a place on the grid"
    headers = [e.all_text().strip() for e in doc.walk() if "col-head" in e.classes()]
    assert headers == ["pixai", "acedata"]
    rows = [e.all_text().strip() for e in doc.walk() if "row-head" in e.classes()]
    assert rows == list(PROMPTS)
    assert {t.attrs["data-provider"] for t in found} == set(PROVIDERS)
    assert sorted(t.attrs["data-state"] for t in found).count("done") == 8


def test_any_two_dimensions_can_be_chosen(root: Path) -> None:
    _, text = render(root, rows="seed", cols="aspect_ratio")
    doc = parse(text)
    assert [e.all_text().strip() for e in doc.walk() if "row-head" in e.classes()] == [
        "1",
        "2",
        "3",
    ]
    assert [e.all_text().strip() for e in doc.walk() if "col-head" in e.classes()] == [
        "1:1",
        "16:9",
    ]
    assert len(tiles(doc)) == 10


def test_a_dimension_no_job_has_is_refused_with_the_known_ones(root: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        pipeline.report(root, rows="aspect_ratoi")
    message = str(caught.value)
    assert "aspect_ratoi" in message
    for known in ("prompt", "provider", "seed", "aspect_ratio"):
        assert known in message
    assert caught.value.exit_code == 2
    assert not (root / "report.html").exists()


def test_dimension_values_come_from_the_job_its_params_and_its_meta() -> None:
    from pipeline.review import dimension_value

    j = Job("id", "pixai", "m1", {"prompt": "p", "seed": 7, "style": "ink"}, 2, "p")
    j = Job(j.id, j.provider, j.model, j.params, j.replicate, j.prompt_slug, {"category": "cats"})
    record = JobRecord(j, S.FAILED)
    assert dimension_value(record, "prompt") == "p"
    assert dimension_value(record, "provider") == "pixai"
    assert dimension_value(record, "model") == "m1"
    assert dimension_value(record, "seed") == 7
    assert dimension_value(record, "style") == "ink"
    assert dimension_value(record, "replicate") == 2
    assert dimension_value(record, "state") == "failed"
    assert dimension_value(record, "meta.category") == "cats"
    assert dimension_value(record, "meta.nope") is None


def test_captions_name_what_tells_a_cells_tiles_apart(root: Path) -> None:
    _, text = render(root)
    captions = [e.all_text() for t in tiles(parse(text)) for e in t.walk() if e.tag == "figcaption"]
    assert any("seed 2" in c and "aspect_ratio 1:1" in c for c in captions), captions
    assert not any("model" in c or "prompt" in c for c in captions), captions


def test_states_can_be_chosen(root: Path) -> None:
    _, text = render(root, states=["failed", "unknown"])
    found = tiles(parse(text))
    assert sorted(t.attrs["data-state"] for t in found) == ["failed", "unknown"]


# -- user text, paths, failures ------------------------------------------------------------


def test_prompts_and_reasons_are_escaped_everywhere(root: Path) -> None:
    _, text = render(root)
    assert "<img src=x" not in text
    assert "<b>no</b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    doc = parse(text)
    hostile = [t for t in tiles(doc) if XSS in t.attrs["title"]]
    assert len(hostile) == 5, "the hover text carries the prompt, unescaped once parsed"
    assert all(e.tag in {"img", "video", "a"} or "src" not in e.attrs for e in doc.walk())


def test_outputs_are_linked_relative_to_the_page_and_quoted(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "sheets" / "deep" / "sheet.html"
    dest, text = render(root, dest=elsewhere)
    assert dest == elsewhere
    doc = parse(text)
    images = [e for e in doc.walk() if e.tag == "img"]
    videos = [e for e in doc.walk() if e.tag == "video"]
    assert len(images) == 4 and len(videos) == 4
    for element in images + videos:
        src = element.attrs["src"]
        assert not src.startswith(("/", "file:", "data:", "http")), src
        assert "#" not in src and " " not in src, "a path needs quoting in a URL"
        target = (dest.parent / urllib.parse.unquote(src)).resolve()
        assert target.is_file(), src
        assert target.is_relative_to(root.resolve())
    assert all(e.attrs.get("loading") == "lazy" for e in images)
    assert all("controls" in e.attrs and e.attrs.get("preload") == "metadata" for e in videos)


def test_failures_and_unknown_jobs_show_their_reasons(root: Path) -> None:
    _, text = render(root)
    by_state = {t.attrs["data-state"]: t for t in tiles(parse(text))}
    failed = by_state["failed"].all_text()
    assert "content policy: <b>no</b> foxes" in failed
    assert "remote" in failed
    assert "connection reset" in by_state["unknown"].all_text()


def test_filters_list_each_state_and_provider_with_counts(root: Path) -> None:
    _, text = render(root)
    doc = parse(text)
    boxes = [e for e in doc.walk() if e.tag == "input" and e.attrs.get("type") == "checkbox"]
    values = {(b.attrs["name"], b.attrs["value"]) for b in boxes}
    assert values == {
        ("state", "done"),
        ("state", "failed"),
        ("state", "unknown"),
        ("provider", "pixai"),
        ("provider", "acedata"),
    }
    assert all("checked" in b.attrs for b in boxes)


def test_nothing_is_fetched_from_outside_and_only_our_script_runs(root: Path) -> None:
    _, text = render(root)
    doc = parse(text)
    for element in doc.walk():
        for name in ("src", "href"):
            value = element.attrs.get(name, "")
            assert not re.match(r"[a-z]+:", value), f"{element.tag} {name}={value}"
    scripts = [e for e in doc.walk() if e.tag == "script"]
    assert len(scripts) == 1 and "src" not in scripts[0].attrs
    policy = next(
        e.attrs["content"]
        for e in doc.walk()
        if e.tag == "meta" and e.attrs.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in policy
    digest = base64.b64encode(hashlib.sha256(scripts[0].text.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy, "the inline script is the one the policy allows"


# -- the command and the library -----------------------------------------------------------


def test_the_command_writes_the_page_atomically(root: Path, capsys) -> None:
    assert main(["report", str(root)]) == 0
    assert (root / "report.html").is_file()
    assert str(root / "report.html") in capsys.readouterr().out
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]

    out = root / "other.html"
    assert main(["report", str(root), "-o", str(out), "--rows", "seed", "--cols", "provider"]) == 0
    assert len(tiles(parse(out.read_text(encoding="utf-8")))) == 10
    assert main(["report", str(root), "--state", "done", "-o", str(out)]) == 0
    assert len(tiles(parse(out.read_text(encoding="utf-8")))) == 8


def test_the_command_refuses_an_unknown_state(root: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["report", str(root), "--state", "finished"])
    assert caught.value.code == 2


def test_a_large_manifest_renders_every_tile(tmp_path: Path) -> None:
    root = tmp_path / "big"
    with Manifest.open(root, spec_name="big") as m:
        m.add_jobs(
            Job(f"j{i}", f"p{i % 4}", None, {"prompt": f"prompt {i // 8}", "seed": i % 2}, 0, "")
            for i in range(4000)
        )
    _, text = render(root)
    assert text.count('class="tile ') == 4000
    assert text.count('class="row-head"') == 500
