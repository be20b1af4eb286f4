"""download(): real HTTP on loopback against a small aiohttp server with bad habits.

The server can honour or ignore Range, cut a body short, refuse with 403/404/429/503,
answer with an HTML page, redirect, and it records every request's headers. Every test
runs with every transport the project uses (httpx's own, httpx-aiohttp, and the client
``pipeline.http.client.make_download_client`` builds, whose aiohttp stream hands on whole pieces).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import httpx_aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.outputs.download
import pipeline.outputs.durable
from pipeline.errors import DownloadError, VerificationError
from pipeline.http.client import make_download_client
from pipeline.models import Output, OutputRef
from pipeline.outputs.download import (
    download,
    download_retry_verdict,
    part_path,
    sidecar_text,
    validator_path,
    write_atomic_text,
    write_sidecar,
)
from pipeline.outputs.guard import DownloadPolicy

from .conftest import serve_app

BODY = os.urandom(300_000) + b"\x89PNG-ish tail"
SHA = hashlib.sha256(BODY).hexdigest()
CUT = 200_000  # where truncated answers stop
CHUNK = 32 * 1024  # small coalescing chunks, so a cut body leaves a resumable prefix

LOOSE = DownloadPolicy(allow_private=True)  # the test servers are on loopback


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    base: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def headers_for(self, path: str) -> list[dict[str, str]]:
        return [headers for seen, headers in self.requests if seen == path]


def _ranged(request: web.Request, content_type: str = "image/png") -> web.Response:
    header = request.headers.get("Range")
    if not header:
        return web.Response(body=BODY, content_type=content_type)
    start = int(header.removeprefix("bytes=").split("-")[0])
    if start >= len(BODY):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(BODY)}"})
    content_range = f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"
    return web.Response(
        status=206,
        body=BODY[start:],
        content_type=content_type,
        headers={"Content-Range": content_range},
    )


async def _cut_short(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    response.content_length = len(BODY)
    await response.prepare(request)
    await response.write(BODY[:CUT])
    await asyncio.sleep(0.05)  # let the client read the prefix (aiohttp drops unread data)
    assert request.transport is not None
    request.transport.close()
    return response


def _make_app(server: Server) -> web.Application:
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        server.requests.append((request.path, dict(request.headers)))
        server.hits[request.path] = server.hits.get(request.path, 0) + 1
        result: web.StreamResponse = await handler(request)
        return result

    async def file(request: web.Request) -> web.StreamResponse:
        return _ranged(request)

    async def no_range(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BODY, content_type="image/png")

    async def flaky(request: web.Request) -> web.StreamResponse:
        if server.hits[request.path] == 1:
            return await _cut_short(request)
        return _ranged(request)

    async def cut(request: web.Request) -> web.StreamResponse:
        return await _cut_short(request)

    async def status(request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        headers = {}
        if code == 429:
            headers["Retry-After"] = "7"
        if code == 503:
            headers["Retry-After"] = "Wed, 21 Oct 2099 07:28:00 GMT"
        return web.Response(status=code, text="no", headers=headers)

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body>Access denied</body></html>", content_type="text/html"
        )

    async def json_as_octets(request: web.Request) -> web.StreamResponse:
        body = b'{"error": "quota exceeded"}'
        return web.Response(body=body, content_type="application/octet-stream")

    async def wrong_start(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Range": f"bytes 5-{len(BODY) - 1}/{len(BODY)}"}
        return web.Response(status=206, body=BODY[5:], content_type="image/png", headers=headers)

    async def split_json(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b" \n")  # a first piece too short to judge on its own
        await asyncio.sleep(0.02)
        await response.write(b'{"error": "quota exceeded"}')
        return response

    async def norange_cut(request: web.Request) -> web.StreamResponse:
        return await _cut_short(request)  # ignores Range, answers 200 and hangs up

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/file/a.png")

    async def api(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[web.middleware(record)])
    app.router.add_get("/file/{name}", file)
    app.router.add_get("/norange/{name}", no_range)
    app.router.add_get("/flaky/{name}", flaky)
    app.router.add_get("/cut/{name}", cut)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/html", html)
    app.router.add_get("/octets", json_as_octets)
    app.router.add_get("/wrong-start", wrong_start)
    app.router.add_get("/split-json", split_json)
    app.router.add_get("/norange-cut/{name}", norange_cut)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/api", api)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(base="")
    async with serve_app(_make_app(state)) as state.base:
        yield state


@pytest.fixture(params=["httpx", "aiohttp", "pipeline"])
async def client(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "pipeline":
        monkeypatch.delenv("PIPELINE_HTTP_BACKEND", raising=False)
        async with make_download_client(timeout=10, max_connections=8) as ours:
            yield ours
        return
    transport = httpx_aiohttp.AiohttpTransport() if request.param == "aiohttp" else None
    async with httpx.AsyncClient(transport=transport, timeout=10) as plain:
        yield plain


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out" / "deep" / "img.png"


def seed_part(dest: Path, data: bytes, total: int = len(BODY)) -> None:
    """A .part left by an earlier attempt at a file of ``total`` bytes (no ETag)."""
    part_path(dest).write_bytes(data)
    validator = {"etag": None, "last_modified": None, "total": total}
    validator_path(part_path(dest)).write_text(json.dumps(validator))


async def fetch(client: httpx.AsyncClient, url: str, dest: Path, **ref: Any) -> Output:
    return await download(
        client,
        OutputRef(url, **ref),
        dest,
        job_id="j1",
        index=0,
        rel_path="p/img.png",
        policy=LOOSE,
        chunk_size=CHUNK,
    )


# --- success ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_success_writes_verified_file(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    url = server.url("/file/a.png")
    output = await fetch(client, url, dest, size=len(BODY), sha256=SHA, content_type="image/")
    assert dest.read_bytes() == BODY
    assert output == Output("j1", 0, "p/img.png", len(BODY), SHA, url=url, content_type="image/png")
    assert not part_path(dest).exists()
    assert list(dest.parent.iterdir()) == [dest]


@pytest.mark.anyio
async def test_small_body_and_its_sidecar_cost_one_thread_hop(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh body that fits in ``chunk_size`` is held and written by the one hop after
    the transfer, with its sidecar (directory, write, fsync, close, renames, directory
    fsync); the check for an old .part before the request is a stat in the loop."""
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    url = server.url("/file/a.png")
    seen: list[Output] = []

    def provenance(output: Output) -> dict[str, Any]:
        seen.append(output)
        return {"sha256": output.sha256, "api_key": "sk-never"}

    output = await download(client, OutputRef(url, sha256=SHA), dest, job_id="j", index=0,
                            rel_path="img.png", policy=LOOSE, sidecar=provenance)  # fmt: skip
    assert output.sha256 == SHA and output.size == len(BODY) and seen == [output]
    assert dest.read_bytes() == BODY and not part_path(dest).exists()
    assert hops == ["commit"]
    sidecar = dest.with_name(dest.name + ".json")
    assert json.loads(sidecar.read_text()) == {"sha256": SHA, "api_key": "[redacted]"}
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name, sidecar.name]


@pytest.mark.anyio
async def test_failed_sidecar_write_leaves_no_output_in_place(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output is renamed into place only once its sidecar is safely written: when
    that fails, neither file is in place and nothing temporary is left but the .part."""

    def provenance(output: Output) -> dict[str, Any]:
        return {"sha256": output.sha256}

    def failing_text(data: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.outputs.download, "sidecar_text", failing_text)
    url = server.url("/file/a.png")
    with pytest.raises(OSError, match="No space"):
        await download(client, OutputRef(url, sha256=SHA), dest, job_id="j", index=0,
                       rel_path="img.png", policy=LOOSE, sidecar=provenance)  # fmt: skip
    assert not dest.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == [part_path(dest).name]


@pytest.mark.anyio
async def test_a_committer_makes_many_downloads_durable_in_few_hops(
    client: httpx.AsyncClient, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downloads finishing together share worker hops; each directory is fsynced once
    per batch, after its renames; one download's failure stays its own."""
    hops: list[int] = []
    synced: list[Path] = []
    run_sync = anyio.to_thread.run_sync
    real_fsync_dir = pipeline.outputs.durable.fsync_dir

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return await run_sync(func, *args, **kwargs)

    def recording(directory: Path) -> None:
        synced.append(directory)
        real_fsync_dir(directory)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    monkeypatch.setattr(pipeline.outputs.durable, "fsync_dir", recording)
    (tmp_path / "blocked").write_text("a file where a directory should be")
    targets = [tmp_path / "out" / f"d{i % 2}" / f"{i}.png" for i in range(12)]
    targets.append(tmp_path / "blocked" / "x.png")
    committer = pipeline.outputs.download.Committer()
    results: dict[int, Output | BaseException] = {}

    async def one(index: int, target: Path) -> None:
        try:
            results[index] = await download(
                client, OutputRef(server.url("/file/a.png"), sha256=SHA), target,
                job_id=f"j{index}", index=0, rel_path=target.name, policy=LOOSE,
                sidecar=lambda o: {"job": o.job_id}, committer=committer,
            )  # fmt: skip
        except (OSError, DownloadError) as exc:
            results[index] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        async with anyio.create_task_group() as downloads:
            for index, target in enumerate(targets):
                downloads.start_soon(one, index, target)
        group.cancel_scope.cancel()
    assert isinstance(results.pop(len(targets) - 1), NotADirectoryError)
    for index, target in enumerate(targets[:-1]):
        output = results[index]
        assert isinstance(output, Output) and output.sha256 == SHA
        assert target.read_bytes() == BODY and not part_path(target).exists()
        assert json.loads(target.with_name(target.name + ".json").read_text()) == {
            "job": f"j{index}"
        }
    assert sum(hops) == len(targets) and len(hops) < len(targets)  # batched
    assert sorted(set(synced)) == sorted({t.parent for t in targets[:-1]})
    assert len(synced) <= 2 * len(hops)  # at most once per directory per batch


@pytest.mark.anyio
async def test_a_stopped_committer_refuses_instead_of_hanging(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    committer = pipeline.outputs.download.Committer()
    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        await anyio.sleep(0)
        group.cancel_scope.cancel()
    with anyio.fail_after(5), pytest.raises(DownloadError, match="not committed"):
        await download(client, OutputRef(server.url("/file/a.png")), dest, job_id="j",
                       index=0, rel_path="img.png", policy=LOOSE, committer=committer)  # fmt: skip
    assert not dest.exists()


@pytest.mark.anyio
async def test_large_body_streams_and_starts_writeback(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``chunk_size`` the body streams to the .part, and the kernel is asked to
    start writing back every ``_WRITEBACK_STEP`` bytes; the result is the same file."""
    calls: list[tuple[int, int]] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length))
        os.posix_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(pipeline.outputs.download, "_WRITEBACK_STEP", 64 * 1024)
    if hasattr(os, "posix_fadvise"):
        monkeypatch.setattr(pipeline.outputs.download, "_FADVISE", fadvise)
    url = server.url("/file/a.png")
    output = await fetch(client, url, dest, size=len(BODY), sha256=SHA)
    assert output.sha256 == SHA and dest.read_bytes() == BODY
    assert list(dest.parent.iterdir()) == [dest]
    if hasattr(os, "posix_fadvise"):
        assert calls and calls[0][0] == 0
        offsets = [offset for offset, _ in calls]
        assert offsets == sorted(set(offsets)) and offsets[-1] < len(BODY)


@pytest.mark.anyio
async def test_a_large_body_is_hashed_and_written_in_order_by_the_worker(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``chunk_size`` the worker gets the body in batches, one at a time: small
    batches make many hops, and the file and its sha256 are still the body's."""
    monkeypatch.setattr(pipeline.outputs.download, "_BATCH", 4096)
    hops: list[int] = []
    write = pipeline.outputs.download._PartBody._write

    def counting(self: Any, batch: list[bytes]) -> None:
        hops.append(sum(map(len, batch)))
        write(self, batch)

    monkeypatch.setattr(pipeline.outputs.download._PartBody, "_write", counting)
    output = await fetch(client, server.url("/file/a.png"), dest, size=len(BODY), sha256=SHA)
    assert output.sha256 == SHA and output.size == len(BODY)
    assert dest.read_bytes() == BODY and not part_path(dest).exists()
    assert sum(hops) == len(BODY) and len(hops) >= 3  # the pieces the transport gave


@pytest.mark.anyio
async def test_a_write_error_in_the_worker_is_raised_as_itself(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while streaming: the OSError comes out plain (no exception group),
    the receiving stops, and nothing is renamed into place."""
    monkeypatch.setattr(pipeline.outputs.download, "_BATCH", 4096)
    calls = 0

    def full(self: Any, batch: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.outputs.download._PartBody, "_write", full)
    with anyio.fail_after(10), pytest.raises(OSError, match="No space left") as caught:
        await fetch(client, server.url("/file/a.png"), dest, sha256=SHA)
    assert type(caught.value) is OSError
    assert calls == 1 and not dest.exists()


@pytest.mark.anyio
async def test_a_cut_large_body_keeps_what_arrived_and_resumes(
    client: httpx.AsyncClient, server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer that breaks while the worker writes: the bytes that arrived, the last
    partial batch included, are the .part's prefix, and the next attempt resumes."""
    monkeypatch.setattr(pipeline.outputs.download, "_BATCH", 4096)
    url = server.url("/flaky/a.png")
    with pytest.raises(DownloadError) as caught:
        await fetch(client, url, dest, sha256=SHA)
    assert caught.value.transient
    kept = part_path(dest).read_bytes()
    assert BODY.startswith(kept) and len(kept) <= CUT
    output = await fetch(client, url, dest, sha256=SHA, size=len(BODY))
    assert output.sha256 == SHA and dest.read_bytes() == BODY


@pytest.mark.anyio
async def test_pipeline_transport_hands_on_large_pieces(server: Server) -> None:
    """Upstream httpx-aiohttp reads 16 KiB at a time; ours yields what the socket gave."""
    async with (
        make_download_client(timeout=10, max_connections=2) as ours,
        ours.stream("GET", server.url("/file/a.png")) as response,
    ):
        pieces = [piece async for piece in response.aiter_raw()]
    assert b"".join(pieces) == BODY
    if os.environ.get("PIPELINE_HTTP_BACKEND", "aiohttp") == "aiohttp":
        assert max(map(len, pieces)) > 16 * 1024


@pytest.mark.anyio
async def test_follows_redirects(client: httpx.AsyncClient, server: Server, dest: Path) -> None:
    output = await fetch(client, server.url("/redirect"), dest, sha256=SHA)
    assert output.sha256 == SHA
    assert dest.read_bytes() == BODY


def test_sidecar_is_pretty_sorted_json_and_atomic(tmp_path: Path) -> None:
    output_file = tmp_path / "img.png"
    data = {"sha256": SHA, "prompt": "a cat ☕", "path": tmp_path, "params": {"b": 1, "a": 2}}
    sidecar = write_sidecar(output_file, data)
    assert sidecar == tmp_path / "img.png.json"
    text = sidecar.read_text(encoding="utf-8")
    loaded = json.loads(text)
    assert loaded["prompt"] == "a cat ☕"
    assert loaded["path"] == str(tmp_path)
    assert text.index('"a"') < text.index('"b"')
    assert "\n  " in text
    assert [p.name for p in tmp_path.iterdir()] == ["img.png.json"]  # no temporary left


def test_sidecar_redacts_credential_keys(tmp_path: Path) -> None:
    sidecar = write_sidecar(tmp_path / "x.png", {"provider": {"api_key": "sk-123", "name": "p"}})
    assert "sk-123" not in sidecar.read_text()


def _reference_sidecar_text(data: Any) -> str:
    """What ``sidecar_text`` must equal: a redacted copy through ``json.dumps``."""

    def redact(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                key: "[redacted]" if str(key).lower() in REDACTED else redact(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [redact(item) for item in value]
        return value

    text = json.dumps(redact(data), indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return text + "\n"


REDACTED = ("api_key", "apikey", "x-api-key", "authorization", "password", "secret",
            "access_token")  # fmt: skip
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.builds(Path, st.text(alphabet="abc/", max_size=8))
    | st.sampled_from([IntEnum("Level", "LOW HIGH").HIGH, date(2026, 11, 23)])
)  # fmt: skip
_keys = st.text(max_size=6) | st.sampled_from(["API_KEY", "Authorization", "token", "name"])
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _documents, max_size=6))
def test_sidecar_text_is_json_dumps_of_the_redacted_data(data: dict[str, Any]) -> None:
    assert sidecar_text(data) == _reference_sidecar_text(data)


@pytest.mark.parametrize(
    "data",
    [{}, {"a": []}, {"a": {}}, {1: "x", 2: "y"}, {1.5: 1, 2.5: float("nan")},
     {"x": float("-inf"), "y": float("inf")}, {None: 1}, {True: 1, False: 2},
     {"ünï": "☕\u2028\"\\"}, {"nested": {"Api_Key": {"deep": 1}, "keep": (1, 2)}}],
)  # fmt: skip
def test_sidecar_text_edge_cases_match_json_dumps(data: dict[Any, Any]) -> None:
    assert sidecar_text(data) == _reference_sidecar_text(data)


def test_sidecar_text_refuses_keys_json_refuses() -> None:
    with pytest.raises(TypeError):
        _reference_sidecar_text({("a", 1): 1})
    with pytest.raises(TypeError):
        sidecar_text({("a", 1): 1})


def test_write_atomic_text_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    target.write_text("old\n")

    def broken(out: Any) -> None:
        out.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomic_text(target, broken)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]


# --- truncation and resume -----------------------------------------------------------


@pytest.mark.anyio
async def test_truncated_body_is_transient_and_leaves_no_file(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(DownloadError) as caught:
        await fetch(client, server.url("/cut/a.png"), dest, sha256=SHA)
    assert caught.value.transient
    assert download_retry_verdict(caught.value) is True
    assert not dest.exists()
    assert part_path(dest).stat().st_size <= CUT  # a prefix, kept for resuming


@pytest.mark.anyio
async def test_cut_body_resumes_with_range(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    url = server.url("/flaky/a.png")
    with pytest.raises(DownloadError):
        await fetch(client, url, dest, sha256=SHA)
    kept = part_path(dest).stat().st_size
    assert kept <= CUT  # aiohttp may drop what it had buffered when the peer hangs up
    output = await fetch(client, url, dest, sha256=SHA, size=len(BODY))
    assert output.sha256 == SHA and dest.read_bytes() == BODY
    if kept:
        assert server.headers_for("/flaky/a.png")[-1]["Range"] == f"bytes={kept}-"


@pytest.mark.anyio
async def test_resumes_existing_part(client: httpx.AsyncClient, server: Server, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    seed_part(dest, BODY[:12345])
    output = await fetch(client, server.url("/file/a.png"), dest, sha256=SHA)
    assert output.sha256 == SHA and output.size == len(BODY)
    assert dest.read_bytes() == BODY and not part_path(dest).exists()
    assert server.headers_for("/file/a.png")[0]["Range"] == "bytes=12345-"


@pytest.mark.anyio
async def test_server_without_range_restarts_from_zero(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    dest.parent.mkdir(parents=True)
    seed_part(dest, b"stale bytes that are not a prefix")
    output = await fetch(client, server.url("/norange/a.png"), dest, size=len(BODY))
    assert output.sha256 == SHA and dest.read_bytes() == BODY
    assert server.headers_for("/norange/a.png")[0]["Range"].startswith("bytes=")


@pytest.mark.anyio
async def test_part_longer_than_file_restarts(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    dest.parent.mkdir(parents=True)
    seed_part(dest, BODY + b"junk")
    output = await fetch(client, server.url("/file/a.png"), dest, sha256=SHA)
    assert output.sha256 == SHA and dest.read_bytes() == BODY
    assert [h.get("Range") for h in server.headers_for("/file/a.png")] == [
        f"bytes={len(BODY) + 4}-",
        None,
    ]


@pytest.mark.anyio
async def test_bad_resumed_prefix_fails_checksum_and_is_discarded(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    dest.parent.mkdir(parents=True)
    seed_part(dest, b"x" * 1000)  # not the file's first 1000 bytes
    with pytest.raises(VerificationError, match="sha256"):
        await fetch(client, server.url("/file/a.png"), dest, sha256=SHA)
    assert not dest.exists() and not part_path(dest).exists()
    assert (await fetch(client, server.url("/file/a.png"), dest, sha256=SHA)).sha256 == SHA


@pytest.mark.anyio
async def test_wrong_content_range_start_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    dest.parent.mkdir(parents=True)
    seed_part(dest, BODY[:100])
    with pytest.raises(VerificationError, match="resumed at byte 5"):
        await fetch(client, server.url("/wrong-start"), dest)
    assert not dest.exists() and not part_path(dest).exists()


# --- verification ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_size_mismatch_with_provider_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="provider promised"):
        await fetch(client, server.url("/file/a.png"), dest, size=len(BODY) - 1)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.anyio
async def test_checksum_mismatch_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="sha256"):
        await fetch(client, server.url("/file/a.png"), dest, sha256="0" * 64)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.anyio
async def test_html_page_is_not_an_image(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="HTML"):
        await fetch(client, server.url("/html"), dest, content_type="image/")
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.anyio
async def test_wrong_content_family_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="video/"):
        await fetch(client, server.url("/file/a.png"), dest, content_type="video/")
    assert not dest.exists()


@pytest.mark.anyio
async def test_error_json_served_as_octets_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="error page"):
        await fetch(client, server.url("/octets"), dest, content_type="image/")
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.anyio
async def test_error_json_split_across_pieces_is_refused(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(VerificationError, match="error page"):
        await fetch(client, server.url("/split-json"), dest, content_type="image/")
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.anyio
async def test_stale_part_is_truncated_before_a_restarted_body_breaks(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    """A server that ignores Range restarts the body from byte 0: the stale .part must
    not survive under the new bytes, or the next attempt would resume from junk."""
    dest.parent.mkdir(parents=True)
    seed_part(dest, b"j" * 1000)
    ref = OutputRef(server.url("/norange-cut/a.png"))
    with pytest.raises(DownloadError) as caught:  # default chunk_size: the cut is held
        await download(client, ref, dest, job_id="j", index=0, rel_path="img.png", policy=LOOSE)
    assert caught.value.transient
    kept = part_path(dest).read_bytes()
    assert BODY.startswith(kept)


# --- HTTP errors -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("code", [403, 404, 410])
async def test_gone_or_forbidden_is_final(
    client: httpx.AsyncClient, server: Server, dest: Path, code: int
) -> None:
    with pytest.raises(DownloadError) as caught:
        await fetch(client, server.url(f"/status/{code}"), dest)
    assert not caught.value.transient
    assert str(code) in str(caught.value) and "expired or forbidden" in str(caught.value)
    assert download_retry_verdict(caught.value) is False
    assert not dest.exists()


@pytest.mark.anyio
async def test_429_is_transient_with_retry_after(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(DownloadError) as caught:
        await fetch(client, server.url("/status/429"), dest)
    assert caught.value.transient and caught.value.retry_after == 7.0
    assert download_retry_verdict(caught.value) == 7.0


@pytest.mark.anyio
async def test_503_with_http_date_retry_after(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    with pytest.raises(DownloadError) as caught:
        await fetch(client, server.url("/status/503"), dest)
    assert caught.value.transient
    assert caught.value.retry_after is not None and caught.value.retry_after > 1e6


@pytest.mark.anyio
async def test_connection_refused_is_transient(client: httpx.AsyncClient, dest: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        await fetch(client, "http://127.0.0.1:9/nothing", dest)
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_authorization_reaches_download_host(
    client: httpx.AsyncClient, server: Server, dest: Path
) -> None:
    headers = {"Authorization": "Bearer sk-secret"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as api_client:
        assert (await api_client.get(server.url("/api"))).status_code == 200
        await fetch(client, server.url("/redirect"), dest, sha256=SHA)
        await api_client.get(server.url("/api"))
    assert server.headers_for("/api")[0]["Authorization"] == "Bearer sk-secret"
    for path in ("/redirect", "/file/a.png"):
        assert server.headers_for(path)
        assert all("Authorization" not in seen for seen in server.headers_for(path))


@pytest.mark.anyio
async def test_credentials_on_a_misused_client_are_stripped(server: Server, dest: Path) -> None:
    secret = {"Authorization": "Bearer sk-secret", "X-API-Key": "k", "Cookie": "s=1",
              "X-Auth-Token": "t", "ApiKey": "a", "X-Client-Secret": "c"}  # fmt: skip
    headers = {**secret, "X-Trace-Id": "kept"}
    async with httpx.AsyncClient(headers=headers, auth=("user", "pw"), timeout=10) as misused:
        await fetch(misused, server.url("/redirect"), dest, sha256=SHA)
    for _path, seen in server.requests:
        lowered = {name.lower() for name in seen}
        assert not lowered & {name.lower() for name in secret}
        assert "x-trace-id" in lowered  # only what looks like a credential goes


def test_a_download_hosts_retry_after_is_cut_to_max_retry_after():
    """A file host asking for a day-long pause waits at most ``run.max_retry_after``;
    its shorter asks are honoured as they are."""
    from pipeline.errors import DownloadError
    from pipeline.outputs.fetch import _download_transient

    assert _download_transient(DownloadError("503", retry_after=86400.0), 300.0) == 300.0
    assert _download_transient(DownloadError("503", retry_after=2.0), 300.0) == 2.0
    assert _download_transient(DownloadError("cut short"), 300.0) is True
    assert _download_transient(DownloadError("404", transient=False), 300.0) is False
