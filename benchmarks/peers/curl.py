"""``curl`` (the system binary) as the raw download baseline.

``available()`` says whether it is installed; a scenario reports "curl missing" rather
than failing when it is not.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Proc, run_measured


def available() -> str | None:
    """The curl version line, or None when there is no curl."""
    path = shutil.which("curl")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else path


def download(urls: Sequence[str], out: Path, *, parallel: int = 1) -> Proc:
    """Fetch every URL into ``out`` (one file each), ``parallel`` at a time."""
    curl = shutil.which("curl")
    assert curl is not None
    config = out / "curl.cfg"
    lines = [f'url = "{url}"\noutput = "{out / f"{i}.bin"}"\n' for i, url in enumerate(urls)]
    config.write_text("".join(lines))
    args = [curl, "--silent", "--show-error", "--fail", "--config", str(config)]
    if parallel > 1:
        args += ["--parallel", "--parallel-max", str(parallel)]
    return run_measured(args).check()
