"""`pipeline export --format hf|csv|parquet`: a run's outputs as a dataset that the real
`datasets` library (and pyarrow) loads as it is, built beside the originals without
touching them, and the same export from Python."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.dataset.rows import ColumnTypes, record_rows
from pipeline.errors import ExportError
from pipeline.manifest.store import Manifest
from pipeline.models import Job, JobRecord, JobState, Output

from .conftest import run_cli

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """`datasets` caches what it loads; keep it out of the user's ~/.cache. One cache for
    the whole session, so a stale entry would show."""
    cache = tmp_path_factory.getbasetemp() / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` but SQLite's WAL files (any reader of a WAL database
    may create them): relative path → (sha256, mtime in ns)."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith("manifest.sqlite-")
    }


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real quickstart (36 images, 12 MP4 videos) on the built-in emulators."""
    work = tmp_path_factory.mktemp("quickstart")
    out = work / "out"
    result = run_cli("run", str(QUICKSTART), "--out", str(out), "--quiet", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def export_cli(*args: str, cwd: Path) -> str:
    result = run_cli("export", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- hf: the done-when of issue 12 -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quickstart_exports_to_a_folder_datasets_loads_as_it_is(quickstart, tmp_path):
    before = files_of(quickstart)
    dest = tmp_path / "dataset"

    printed = export_cli(str(quickstart), "--format", "hf", "-o", str(dest), cwd=tmp_path)

    assert "48 rows" in printed, printed
    everything = datasets.load_dataset(str(dest), split="train")
    assert everything.num_rows == 48
    for column in ("file_name", "prompt", "provider", "model", "seed", "job_id", "sha256"):
        assert column in everything.column_names, everything.column_names
    assert everything.features["seed"].dtype == "int64"
    assert sorted(set(everything["provider"])) == ["acedata", "apixo", "pixai", "pixellabs"]
    assert sorted(set(everything["kind"])) == ["image", "video"]
    for row in everything:  # every row names its file, relative to the folder
        assert (dest / row["file_name"]).is_file(), row["file_name"]

    images = datasets.load_dataset(str(dest / "images"), split="train")
    assert images.num_rows == 36
    assert images.features["image"].__class__.__name__ == "Image"
    assert images[0]["image"].size[0] > 0  # a decoded PIL image
    assert {"prompt", "provider", "seed", "aspect_ratio", "style"} <= set(images.column_names)

    videos = datasets.load_dataset(str(dest / "videos"), split="train")
    assert videos.num_rows == 12
    assert videos.features["video"].__class__.__name__ == "Video"
    paths = videos.cast_column("video", datasets.Video(decode=False))
    first = paths[0]["video"]["path"]
    assert first.endswith(".mp4") and Path(first).is_file()
    assert set(videos["duration"]) == {5}

    # the originals are untouched, linked (same filesystem) and no sidecar came along
    assert files_of(quickstart) == before
    exported = [p for p in dest.rglob("*") if p.is_file()]
    assert not [p for p in exported if p.name.endswith((".png.json", ".mp4.json"))]
    media = [p for p in exported if p.suffix in {".png", ".mp4"}]
    assert len(media) == 48
    originals = {(p.stat().st_dev, p.stat().st_ino) for p in quickstart.rglob("*.*")}
    assert all((p.stat().st_dev, p.stat().st_ino) in originals for p in media)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quickstart_exports_csv_and_parquet_with_the_same_rows(quickstart, tmp_path):
    export_cli(str(quickstart), "--format", "parquet", "-o", str(tmp_path / "q.parquet"),
               cwd=tmp_path)  # fmt: skip
    table = pq.read_table(tmp_path / "q.parquet")
    assert table.num_rows == 48
    assert {"file_name", "prompt", "provider", "seed", "sha256"} <= set(table.column_names)
    assert str(table.schema.field("seed").type) == "int64"
    rows = table.to_pylist()
    assert all((quickstart / row["file_name"]).is_file() for row in rows)

    text = export_cli(str(quickstart), "--format", "csv", cwd=tmp_path)  # to stdout
    from_csv = list(csv.DictReader(io.StringIO(text)))
    assert len(from_csv) == 48
    assert list(from_csv[0]) == table.column_names
    by_file = {row["file_name"]: row for row in rows}
    assert all(by_file[row["file_name"]]["sha256"] == row["sha256"] for row in from_csv)

    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "q.parquet"))
    assert loaded["train"].num_rows == 48


# -- the destination folder --------------------------------------------------------------


def make_done_job(
    manifest: Manifest, root: Path, n: int, *, params: dict[str, Any] | None = None,
    ext: str = "png", provider: str = "pixellabs", body: bytes | None = None,
) -> Job:  # fmt: skip
    """A job recorded ``done`` with one real file (and its sidecar) under ``root``."""
    job = Job(f"job{n:04d}", provider, None, {"prompt": f"a cat {n}", "seed": n, **(params or {})})
    manifest.add_jobs([job])
    path = f"{provider}/cat-{n}.{ext}"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    body = f"file {n}".encode() if body is None else body
    (root / path).write_bytes(body)
    (root / f"{path}.json").write_text("{}", encoding="utf-8")
    sha = hashlib.sha256(body).hexdigest()
    manifest.transition(job.id, JobState.SUBMITTING, expect=JobState.PENDING)
    manifest.transition(job.id, JobState.SUBMITTED, expect=JobState.SUBMITTING, remote_id=f"r{n}")
    manifest.transition(
        job.id, JobState.DOWNLOADING, via=JobState.SUCCEEDED, expect=JobState.SUBMITTED
    )
    kind = "video/mp4" if ext == "mp4" else "image/png"
    manifest.finish(job.id, [Output(job.id, 0, path, len(body), sha, f"http://x/{n}", kind)])
    return job


def make_failed_job(manifest: Manifest, n: int) -> Job:
    job = Job(f"bad{n:04d}", "pixellabs", None, {"prompt": f"a dog {n}", "seed": n})
    manifest.add_jobs([job])
    manifest.transition(job.id, JobState.SUBMITTING, expect=JobState.PENDING)
    manifest.transition(job.id, JobState.SUBMITTED, expect=JobState.SUBMITTING, remote_id="rb")
    manifest.transition(
        job.id, JobState.FAILED, expect=JobState.SUBMITTED, error="content policy", failure="task"
    )
    return job


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """An output folder of 3 done images (one with a list parameter) and 1 failed job."""
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="small") as manifest:
        make_done_job(manifest, root, 1, params={"style": "ink"})
        make_done_job(manifest, root, 2, params={"style": 3})  # a mixed-type column
        make_done_job(manifest, root, 3, params={"refs": ["a", "b"]})
        make_failed_job(manifest, 4)
    return root


def test_hf_refuses_a_folder_that_is_not_one_of_its_exports(small, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me", encoding="utf-8")

    with pytest.raises(ExportError, match="--force"):
        pipeline.export(small, format="hf", dest=dest)
    assert (dest / "notes.txt").read_text(encoding="utf-8") == "keep me"

    pipeline.export(small, format="hf", dest=dest, force=True)
    assert not (dest / "notes.txt").exists()
    again = pipeline.export(small, format="hf", dest=dest)  # its own export: replaced
    assert again.rows == 3


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_hf_never_writes_over_or_inside_the_output_folder(small, where):
    dest = {"inside": small / "ds", "same": small, "parent": small.parent}[where]
    with pytest.raises(ExportError, match="output folder"):
        pipeline.export(small, format="hf", dest=dest, force=True)
    assert (small / "pixellabs" / "cat-1.png").is_file()


def test_hf_leaves_out_files_missing_on_disk_and_says_so(small, tmp_path):
    (small / "pixellabs" / "cat-2.png").unlink()
    done = pipeline.export(small, format="hf", dest=tmp_path / "ds")
    assert done.rows == 2
    assert done.missing == ("pixellabs/cat-2.png",)
    assert datasets.load_dataset(str(tmp_path / "ds"), split="train").num_rows == 2


def test_hf_of_only_images_loads_them_decoded_by_default(tmp_path):
    from PIL import Image

    root = tmp_path / "out"
    with Manifest.open(root, spec_name="pngs") as manifest:
        for n in range(3):
            png = io.BytesIO()
            Image.new("RGB", (8, 4)).save(png, format="PNG")
            make_done_job(manifest, root, n, body=png.getvalue())
    done = pipeline.export(root, format="hf", dest=tmp_path / "ds")
    assert done.rows == 3 and dict(done.kinds) == {"image": 3}
    loaded = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    assert loaded.num_rows == 3
    assert loaded[0]["image"].size == (8, 4)
    by_type = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "ds"), split="train")
    assert by_type.num_rows == 3  # the issue's own call: no sidecar, no duplicate


def test_mixed_types_become_strings_and_lists_json(small, tmp_path):
    done = pipeline.export(small, format="parquet", dest=tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    assert done.rows == 3
    assert table.column("style").to_pylist() == ["ink", "3", None]
    assert table.column("refs").to_pylist() == [None, None, '["a", "b"]']
    assert "error" not in table.column_names  # null in every exported row: left out


def test_states_and_columns_choose_rows_and_columns(small, tmp_path):
    target = tmp_path / "f.csv"
    pipeline.export(
        small, format="csv", dest=target, states=["failed", "done"],
        columns=["job_id", "state", "error", "file_name"],
    )  # fmt: skip
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert [list(row) for row in rows[:1]] == [["job_id", "state", "error", "file_name"]]
    assert [(r["job_id"], r["state"], r["error"]) for r in rows] == [
        ("job0001", "done", ""), ("job0002", "done", ""), ("job0003", "done", ""),
        ("bad0004", "failed", "content policy"),
    ]  # fmt: skip
    assert rows[-1]["file_name"] == ""  # a job without a file: one row, no file

    with pytest.raises(ExportError, match=r"no column 'colour'.*style"):
        pipeline.export(small, format="csv", dest=target, columns=["colour"])
    with pytest.raises(ExportError, match="no state 'finished'"):
        pipeline.export(small, format="csv", dest=target, states=["finished"])


def test_cli_flags_and_jsonl_unchanged(small, tmp_path):
    out = export_cli(str(small), "--format", "csv", "--state", "failed", "--columns",
                     "job_id,error", cwd=tmp_path)  # fmt: skip
    assert out.splitlines() == ["job_id,error", "bad0004,content policy"]

    lines = export_cli(str(small), cwd=tmp_path).splitlines()  # default: the jsonl manifest
    assert [json.loads(line)["id"] for line in lines] == ["job0001", "job0002", "job0003",
                                                          "bad0004"]  # fmt: skip
    refused = run_cli("export", str(small), "--state", "failed", cwd=tmp_path)
    assert refused.returncode == 2 and "jsonl" in refused.stderr
    needs_dest = run_cli("export", str(small), "--format", "hf", cwd=tmp_path)
    assert needs_dest.returncode == 2 and "-o" in needs_dest.stderr


# -- rows --------------------------------------------------------------------------------


def test_a_row_carries_params_metadata_and_provenance():
    job = Job("j1", "acedata", "pixverse", {"prompt": "a fox", "seed": 3, "duration": 5},
              meta={"category": "animals", "seed": "s-3", "id": 17})  # fmt: skip
    record = JobRecord(job, JobState.DONE, outputs=(
        Output("j1", 0, "acedata/fox.mp4", 10, "ab" * 32, "http://x", "video/mp4"),
    ))  # fmt: skip
    (row,) = record_rows(record)
    types = ColumnTypes()
    types.add(row)
    named = types.names()
    assert named["p:prompt"] == "prompt" and named["p:duration"] == "duration"
    assert named["m:category"] == "category" and named["m:id"] == "id"
    assert named["m:seed"] == "meta_seed"  # taken by the parameter
    assert row["file_name"] == "acedata/fox.mp4" and row["kind"] == "video"
    assert row["provider"] == "acedata" and row["model"] == "pixverse"
    assert row["sha256"] == "ab" * 32 and row["state"] == "done"


def test_hf_rows_keep_an_unknown_media_type_out_of_the_typed_folders(tmp_path):
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="mixed") as manifest:
        make_done_job(manifest, root, 1)
        make_done_job(manifest, root, 2, ext="webm")
    done = pipeline.export(root, format="hf", dest=tmp_path / "ds")
    assert dict(done.kinds) == {"image": 1, "file": 1}
    assert (tmp_path / "ds" / "files" / "pixellabs" / "cat-2.webm").is_file()
    table = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    assert table.num_rows == 2
    assert os.path.exists(tmp_path / "ds" / table[1]["file_name"])


def test_a_new_export_is_never_loaded_from_a_stale_cache(tmp_path):
    """`datasets` keys the cache of a README's config by the config, not the files: two
    exports in folders of the same name (or one folder exported again) must not share."""
    root = tmp_path / "out"
    with Manifest.open(root, spec_name="grow") as manifest:
        make_done_job(manifest, root, 1)
        pipeline.export(root, format="hf", dest=tmp_path / "a" / "ds")
        first = datasets.load_dataset(str(tmp_path / "a" / "ds"), split="train")
        make_done_job(manifest, root, 2)
        pipeline.export(root, format="hf", dest=tmp_path / "a" / "ds")
        pipeline.export(root, format="hf", dest=tmp_path / "b" / "ds")
    again = datasets.load_dataset(str(tmp_path / "a" / "ds"), split="train")
    other = datasets.load_dataset(str(tmp_path / "b" / "ds"), split="train")
    assert (first.num_rows, again.num_rows, other.num_rows) == (1, 2, 2)


def test_parquet_without_pyarrow_names_the_extra(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ExportError, match=r"pip install 'genmedia-pipeline\[parquet\]'"):
        pipeline.export(small, format="parquet", dest=tmp_path / "s.parquet")
    assert not list(tmp_path.glob("*.parquet"))
