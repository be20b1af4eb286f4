"""Downloads against hostile hosts: unframed or spliced bodies, endless bodies, SSRF.

Real HTTP on 127.0.0.1 only. Non-loopback addresses appear solely as answers of an
injected resolver, and every such test asserts that no connection was attempted.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiohttp import web

from pipeline.errors import DownloadError
from pipeline.http.client import make_download_client
from pipeline.models import Output, OutputRef, ProviderSettings
from pipeline.outputs.download import download, part_path
from pipeline.outputs.guard import DownloadPolicy, address_refusal, check_hop, policy_for

from .conftest import serve_app

IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _png(size: int, seed: bytes = b"a") -> bytes:
    """A PNG-shaped body of about ``size`` bytes that ends with IEND."""
    filler = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    chunk = struct.pack(">I", len(filler)) + b"tEXt" + filler
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + filler))
    return b"\x89PNG\r\n\x1a\n" + chunk + IEND


PNG_A = _png(400_000, b"a")
PNG_B = _png(400_000, b"b")
LOOSE = DownloadPolicy(allow_private=True)  # loopback test servers are fine here


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out" / "img.png"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_download_client(timeout=10, max_connections=8) as ours:
        yield ours


async def fetch(
    client: httpx.AsyncClient, url: str, dest: Path, policy: DownloadPolicy = LOOSE, **ref: Any
) -> Output:
    return await download(
        client, OutputRef(url, **ref), dest, job_id="j", index=0, rel_path="img.png",
        chunk_size=32 * 1024, policy=policy,
    )  # fmt: skip


RawHandler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server on 127.0.0.1 that answers with whatever bytes ``handler`` writes."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        try:
            await handler(head, writer)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


# --- #9: a body is trusted only when its transfer provably completed ---------------


def _unframed(body: bytes) -> RawHandler:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        writer.write(body)

    return handler


@pytest.mark.anyio
async def test_body_without_length_cut_short_is_not_promoted(
    client: httpx.AsyncClient, dest: Path
) -> None:
    """No Content-Length, no chunking: the connection's close ends the body, which proves
    nothing. Half a PNG (no IEND) is a transient failure, never a file in place."""
    async with raw_server(_unframed(PNG_A[: len(PNG_A) // 2])) as (base, _):
        with pytest.raises(DownloadError) as caught:
            await fetch(client, f"{base}/a.png", dest)
    assert caught.value.transient
    assert "complete" in str(caught.value)
    assert not dest.exists()


@pytest.mark.anyio
async def test_body_without_length_is_trusted_when_content_or_provider_proves_it(
    client: httpx.AsyncClient, dest: Path, tmp_path: Path
) -> None:
    async with raw_server(_unframed(PNG_A)) as (base, _):
        output = await fetch(client, f"{base}/a.png", dest)  # a whole PNG ends with IEND
        assert dest.read_bytes() == PNG_A and output.size == len(PNG_A)
        other = tmp_path / "x.bin"
        sized = await fetch(client, f"{base}/b", other, size=len(PNG_A))
        assert sized.size == len(PNG_A)


@pytest.mark.anyio
async def test_lying_short_content_length_is_caught_by_the_png_end(
    client: httpx.AsyncClient, dest: Path
) -> None:
    """A Content-Length shorter than the file: the bytes it frames are not a whole PNG."""

    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        half = len(PNG_A) // 2
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            + f"Content-Length: {half}\r\n\r\n".encode()
        )
        writer.write(PNG_A)

    async with raw_server(handler) as (base, _):
        with pytest.raises(DownloadError, match="IEND"):
            await fetch(client, f"{base}/a.png", dest)
    assert not dest.exists()


class Changing:
    """A file host whose file changes between attempts; the first answer is cut short."""

    def __init__(self, *, honour_if_range: bool) -> None:
        self.version = 0
        self.honour_if_range = honour_if_range
        self.requests: list[dict[str, str]] = []

    def body(self) -> bytes:
        return PNG_A if self.version == 0 else PNG_B

    def etag(self) -> str:
        return f'"v{self.version}"'

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        body, etag = self.body(), self.etag()
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "image/png"}
        if len(self.requests) == 1:
            response = web.StreamResponse(headers=headers)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[:150_000])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            self.version = 1  # the file changes before the next attempt
            return response
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted and (not self.honour_if_range or if_range in (None, etag)):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return web.Response(status=206, body=body[start:], headers=headers)
        return web.Response(body=body, headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize("honour_if_range", [True, False])
async def test_resume_against_a_changed_file_starts_over(
    client: httpx.AsyncClient, dest: Path, honour_if_range: bool
) -> None:
    """The resume carries If-Range with the first answer's ETag; a host that ignores it
    answers 206 with another ETag, which is refused and fetched again from byte 0."""
    host = Changing(honour_if_range=honour_if_range)
    app = web.Application()
    app.router.add_get("/a.png", host.handle)
    async with serve_app(app) as base:
        with pytest.raises(DownloadError):
            await fetch(client, f"{base}/a.png", dest)
        assert part_path(dest).stat().st_size > 0
        for _ in range(2):
            try:
                await fetch(client, f"{base}/a.png", dest)
                break
            except DownloadError as exc:
                assert exc.transient
    assert dest.read_bytes() == PNG_B
    assert host.requests[1].get("If-Range") == '"v0"'
    assert "Range" in host.requests[1]


# --- #11: byte caps -------------------------------------------------------------------


@pytest.mark.anyio
async def test_endless_download_stops_at_the_cap(client: httpx.AsyncClient, dest: Path) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        piece = b"\x89PNG\r\n\x1a\n" + os.urandom(64 * 1024)
        while True:
            await response.write(piece)

    app = web.Application()
    app.router.add_get("/endless.png", endless)
    async with serve_app(app) as base:
        with anyio.fail_after(20), pytest.raises(DownloadError, match="cap") as caught:
            policy = DownloadPolicy(allow_private=True, max_bytes=2 << 20)
            await fetch(client, f"{base}/endless.png", dest, policy)
    assert not caught.value.transient
    assert not part_path(dest).exists() and not dest.exists()


@pytest.mark.anyio
async def test_announced_length_over_the_cap_is_refused_before_the_body(
    client: httpx.AsyncClient, dest: Path
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 5 << 30
        await response.prepare(request)
        await response.write(b"\x89PNG\r\n\x1a\n")
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/big.png", big)
    async with serve_app(app) as base:
        with anyio.fail_after(10), pytest.raises(DownloadError, match="cap"):
            await fetch(client, f"{base}/big.png", dest, DownloadPolicy(allow_private=True))
    assert not part_path(dest).exists()


# --- #12: SSRF ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254", "10.0.0.1", "172.16.3.4", "192.168.1.1", "127.0.0.1", "0.0.0.0",
        "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::",
        "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:10.0.0.1",
        "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
    ],
)  # fmt: skip
def test_addresses_that_are_not_public_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), DownloadPolicy()) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), DownloadPolicy()) is None


def test_private_allowed_on_request_but_never_metadata_or_link_local() -> None:
    policy = DownloadPolicy(allow_private=True)
    assert address_refusal(ipaddress.ip_address("10.1.2.3"), policy) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), policy) is None
    for never in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "fe80::1"):
        assert address_refusal(ipaddress.ip_address(never), policy) is not None


class FakeResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.answers[host]


def _recording_client() -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=PNG_A, headers={"Content-Type": "image/png"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), sent


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer", ["169.254.169.254", "10.0.0.1", "::ffff:10.0.0.1", "fd00:ec2::254", "127.0.0.1"]
)
async def test_a_name_resolving_to_a_private_address_is_refused_before_any_connect(
    dest: Path, answer: str
) -> None:
    resolver = FakeResolver({"cdn.example": ["93.184.216.34", answer]})
    client, sent = _recording_client()
    async with client:
        with pytest.raises(DownloadError, match="refused") as caught:
            await fetch(
                client, "https://cdn.example/a.png", dest, DownloadPolicy(resolver=resolver)
            )
    assert not caught.value.transient
    assert resolver.asked == [("cdn.example", 443)] and sent == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/latest",
        "http://0x7f.1/a.png",
        "ftp://cdn.example/a.png",
        "file:///etc/passwd",
        "http://user:pw@cdn.example/a.png",
        "http:///a.png",
        "http://[::1/a.png",
        "http://cdn.example:99999/a.png",
        "http://exa mple.com/a.png",
        "not a url",
        "",
    ],
)
async def test_bad_urls_are_final_errors_without_any_request(dest: Path, url: str) -> None:
    resolver = FakeResolver({"cdn.example": ["93.184.216.34"]})
    client, sent = _recording_client()
    async with client:
        with pytest.raises(DownloadError) as caught:
            await fetch(client, url, dest, DownloadPolicy(resolver=resolver))
    assert not caught.value.transient
    assert sent == []


@pytest.mark.anyio
async def test_the_checked_address_is_the_one_connected_to(
    client: httpx.AsyncClient, dest: Path
) -> None:
    """The name resolves (through the injected resolver only) to the loopback server: the
    connection goes to that address, with the name in Host."""
    seen: list[str] = []

    async def file(request: web.Request) -> web.Response:
        seen.append(request.headers["Host"])
        return web.Response(body=PNG_A, content_type="image/png")

    app = web.Application()
    app.router.add_get("/a.png", file)
    async with serve_app(app) as base:
        port = int(base.rsplit(":", 1)[1])
        resolver = FakeResolver({"files.test": ["127.0.0.1"]})
        policy = DownloadPolicy(allow_private=True, resolver=resolver)
        await fetch(client, f"http://files.test:{port}/a.png", dest, policy)
    assert seen == [f"files.test:{port}"]
    assert dest.read_bytes() == PNG_A


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[str, str, list[str]]]:
    """A trusted file host that redirects, and another loopback server that must not be hit."""
    hits: list[str] = []

    async def target(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=PNG_A, content_type="image/png")

    other = web.Application()
    other.router.add_get("/{tail:.*}", target)
    async with serve_app(other) as other_base:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{other_base}/secret.png")

        files = web.Application()
        files.router.add_get("/a.png", redirect)
        async with serve_app(files) as files_base:
            yield files_base, other_base, hits


@pytest.mark.anyio
async def test_loopback_is_refused_unless_the_provider_lives_there(
    client: httpx.AsyncClient, dest: Path
) -> None:
    async with two_hosts() as (files, other, hits):
        with pytest.raises(DownloadError, match="refused"):
            await fetch(client, f"{other}/x.png", dest, DownloadPolicy())
        with pytest.raises(DownloadError, match="refused") as caught:  # a redirect hop
            trusted = policy_for(ProviderSettings("p", "p", base_url=f"{files}/api"))
            await fetch(client, f"{files}/a.png", dest, trusted)
    assert not caught.value.transient
    assert hits == []
    assert not part_path(dest).exists()


@pytest.mark.anyio
async def test_redirects_are_followed_hop_by_hop_within_the_policy(
    client: httpx.AsyncClient, dest: Path
) -> None:
    async with two_hosts() as (files, _other, hits):
        await fetch(client, f"{files}/a.png", dest, DownloadPolicy(allow_private=True))
    assert hits == ["/secret.png"] and dest.read_bytes() == PNG_A


@pytest.mark.anyio
async def test_too_many_redirects_is_a_final_error(client: httpx.AsyncClient, dest: Path) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/loop", loop)
    async with serve_app(app) as base:
        with pytest.raises(DownloadError, match="redirect") as caught:
            await fetch(client, f"{base}/loop", dest)
    assert not caught.value.transient


# --- unmapped transport trouble becomes a reason --------------------------------------


@pytest.mark.anyio
async def test_a_huge_response_header_is_a_download_error(
    client: httpx.AsyncClient, dest: Path
) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
        writer.write(b"Content-Type: image/png\r\nContent-Length: 4\r\n\r\nabcd")

    async with raw_server(handler) as (base, _):
        try:  # refused (aiohttp's line limit) or accepted (h11's): never a foreign error
            await fetch(client, f"{base}/a.png", dest)
        except DownloadError as exc:
            assert "RemoteProtocolError" in str(exc)


@pytest.mark.anyio
async def test_a_small_body_shorter_than_its_length_is_a_transient_download_error(
    client: httpx.AsyncClient, dest: Path
) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        writer.write(PNG_A[:1000])

    async with raw_server(handler) as (base, _):
        with pytest.raises(DownloadError) as caught:
            await fetch(client, f"{base}/a.png", dest)
    assert caught.value.transient and not dest.exists()


# --- the spec's settings ----------------------------------------------------------------


def _load(tmp_path: Path, provider_extra: str) -> Any:
    from pipeline.commands import load_checked_spec

    from .conftest import write_spec

    path = write_spec(
        tmp_path,
        f"""
        name: caps
        providers:
          pixellabs:
            api_key: k
            base_url: http://127.0.0.1:9/api
            {provider_extra}
        prompts: [a fox]
        """,
    )
    return load_checked_spec(path, env={})


def test_caps_and_private_downloads_come_from_the_spec(tmp_path: Path) -> None:
    extra = "limits: {max_response_bytes: 65536, max_download_bytes: 1048576}\n"
    extra += "            allow_private_downloads: true"
    settings = _load(tmp_path, extra).providers["pixellabs"]
    assert (settings.max_response_bytes, settings.max_download_bytes) == (65536, 1 << 20)
    policy = policy_for(settings)
    assert policy.allow_private and policy.max_bytes == 1 << 20
    assert policy.trusted == {("127.0.0.1", 9)}
    default = policy_for(_load(tmp_path, "").providers["pixellabs"])
    assert not default.allow_private and default.max_bytes == 2 << 30


def test_a_cap_too_small_is_a_spec_error(tmp_path: Path) -> None:
    from pipeline.errors import SpecError

    with pytest.raises(SpecError, match=r"providers\.pixellabs\.limits\.max_download_bytes"):
        _load(tmp_path, "limits: {max_download_bytes: 10}")


@pytest.mark.anyio
async def test_an_https_hop_connects_to_the_checked_address_with_the_name_for_tls() -> None:
    resolver = FakeResolver({"cdn.example": ["2606:2800:220:1:248:1893:25c8:1946"]})
    hop = await check_hop(
        httpx.URL("https://cdn.example:8443/a.png?x=1"), DownloadPolicy(resolver=resolver)
    )
    assert hop.connect == "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/a.png?x=1"
    assert (hop.host, hop.sni) == ("cdn.example:8443", "cdn.example")


@pytest.mark.anyio
async def test_the_next_checked_address_is_tried_when_one_refuses_the_connection(
    client: httpx.AsyncClient, dest: Path
) -> None:
    """A name with two checked addresses, the first with nothing listening (127.0.0.2 on
    the same free port): the second serves the file."""
    app = web.Application()
    app.router.add_get("/a.png", _png_response)
    async with serve_app(app) as base:
        port = int(base.rsplit(":", 1)[1])
        resolver = FakeResolver({"files.test": ["127.0.0.2", "127.0.0.1"]})
        policy = DownloadPolicy(allow_private=True, resolver=resolver)
        await fetch(client, f"http://files.test:{port}/a.png", dest, policy)
    assert dest.read_bytes() == PNG_A


async def _png_response(request: web.Request) -> web.Response:
    return web.Response(body=PNG_A, content_type="image/png")


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


MP4 = (
    _box(b"ftyp", b"isom\x00\x00\x02\x00isom")
    + _box(b"moov", b"m" * 500)
    + _box(b"mdat", os.urandom(300_000))
)


def _unframed_video(body: bytes) -> RawHandler:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n")
        writer.write(body)

    return handler


@pytest.mark.anyio
async def test_an_mp4_is_trusted_without_length_only_when_its_boxes_add_up(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    open_ended = tmp_path / "open.mp4"
    async with raw_server(_unframed_video(MP4)) as (base, _):
        assert (await fetch(client, f"{base}/v.mp4", whole)).size == len(MP4)
    async with raw_server(_unframed_video(MP4[:-1000])) as (base, _):
        with pytest.raises(DownloadError, match="MP4") as caught:
            await fetch(client, f"{base}/v.mp4", cut)
    assert caught.value.transient and not cut.exists()
    last_box_open = MP4[:-300_008] + struct.pack(">I", 0) + b"mdat" + os.urandom(1000)
    async with raw_server(_unframed_video(last_box_open)) as (base, _):
        with pytest.raises(DownloadError, match="no length"):
            await fetch(client, f"{base}/v.mp4", open_ended)
    assert whole.read_bytes() == MP4
