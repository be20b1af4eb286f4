"""The contact sheet in a real headless Chromium (Debian's, driven by Playwright): the
quickstart's sheet opens from disk with 48 tiles and no console error, fetches nothing
from outside, every image decodes, a video loads and plays, the filters hide and show
tiles; a hostile prompt runs nothing. A screenshot of the quickstart's sheet is kept in
test-artifacts/ (or $PIPELINE_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does) to run the "
        "contact sheet in a real browser",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright (the dev extra) drives the browser"
)

pytestmark = pytest.mark.slow


def artifacts() -> Path:
    folder = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """One page at a time, with everything it said and asked for recorded."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []

    def open(self, page_path: Path, *, width: int = 2200, height: int = 1400) -> Any:
        self.errors, self.requests, self.dialogs = [], [], []
        page = self.browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        return page


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield Browser(browser)
        finally:
            browser.close()


def pipeline_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped quickstart run for real on its emulators (HTTP on loopback), its output
    root moved into a temporary folder, then `pipeline report`."""
    folder = tmp_path_factory.mktemp("quickstart")
    text = (ROOT / "specs" / "quickstart.yaml").read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^  root: .*$", f"  root: {folder / 'out'}", text)
    assert n == 1
    spec = folder / "quickstart.yaml"
    spec.write_text(text, encoding="utf-8")
    pipeline_cli("run", str(spec), "--quiet", cwd=folder)
    printed = pipeline_cli("report", str(folder / "out"), cwd=folder)
    assert "report.html" in printed
    return folder / "out" / "report.html"


def wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` until true. (Playwright's wait_for_function evaluates its
    predicate with eval, which the page's Content-Security-Policy rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout}s: {expression}"
        page.wait_for_timeout(100)


VISIBLE = "[...document.querySelectorAll('.tile')].filter(t => t.offsetParent !== null).length"


@pytest.mark.timeout(300)
def test_the_quickstart_sheet_in_a_real_browser(chromium: Browser, quickstart: Path) -> None:
    page = chromium.open(quickstart)
    assert page.locator(".tile").count() == 48
    assert page.evaluate(VISIBLE) == 48

    images = page.locator("img").count()
    assert images == 36
    wait_until(page, "[...document.images].every(i => i.complete)")
    assert page.evaluate("[...document.images].filter(i => i.naturalWidth > 0).length") == 36
    assert page.locator("video").count() == 12
    wait_until(page, "[...document.querySelectorAll('video')].every(v => v.readyState >= 1)")
    playing = page.evaluate(
        """async () => {
            const v = document.querySelector('video');
            v.muted = true;
            await v.play();
            await new Promise(r => setTimeout(r, 600));
            v.pause();
            return v.currentTime;
        }"""
    )
    assert playing > 0, "the video did not play"
    page.wait_for_timeout(500)  # let the players settle for the picture
    page.screenshot(path=str(artifacts() / "report-quickstart.png"), full_page=True)

    page.uncheck("input[name=provider][value=acedata]")
    assert page.evaluate(VISIBLE) == 36
    assert page.locator("video:visible").count() == 0
    assert "36 of 48" in page.inner_text("#shown")
    page.uncheck("input[name=state][value=done]")
    assert page.evaluate(VISIBLE) == 0
    page.check("input[name=state][value=done]")
    page.check("input[name=provider][value=acedata]")
    assert page.evaluate(VISIBLE) == 48

    assert chromium.errors == []
    outside = [url for url in chromium.requests if not url.startswith("file://")]
    assert outside == []
    assert chromium.dialogs == []


def test_a_hostile_prompt_runs_nothing_and_failures_show(chromium: Browser, tmp_path) -> None:
    import pipeline
    from pipeline.manifest import Manifest
    from pipeline.models import Job, JobState

    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="hostile") as m:
        jobs = [
            Job(f"j{i}", provider, None, {"prompt": hostile, "seed": i}, 0, "x")
            for i, provider in enumerate(["pixai", "apixo\"'><b>", "pixai"])
        ]
        m.add_jobs(jobs)
        m.transition("j0", JobState.SUBMITTING, expect=JobState.PENDING)
        m.transition("j0", JobState.UNKNOWN, expect=JobState.SUBMITTING, error=hostile)
    page = chromium.open(pipeline.report(root), width=1200, height=800)
    assert page.locator(".tile").count() == 3
    assert hostile in page.inner_text(".tile[data-state=unknown]")
    page.uncheck("input[name=state][value=pending]")
    assert page.evaluate(VISIBLE) == 1
    page.check("input[name=state][value=pending]")
    page.uncheck("input[name=provider][value=pixai]")
    assert page.evaluate(VISIBLE) == 1  # the odd provider name still matches its tiles
    page.wait_for_timeout(200)
    assert chromium.dialogs == []
    assert chromium.errors == []
