"""pipeline.http.client's short path (``LeanClient`` over ``AiohttpTransport``), end to end over
real loopback HTTP against a small aiohttp server that records what it receives.

Most tests run with both backends (``PIPELINE_HTTP_BACKEND`` unset, and ``httpx``): the
short path must behave as httpx does over either transport.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from pipeline.errors import SubmitUnknown, TransientError
from pipeline.http.client import (
    READ_AT_ONCE,
    AiohttpTransport,
    LeanClient,
    make_api_client,
    make_download_client,
    request_was_unsent,
    send,
)
from pipeline.models import OutputRef
from pipeline.outputs.download import download
from pipeline.outputs.guard import DownloadPolicy

from .conftest import serve_app

BIG = os.urandom(3 * READ_AT_ONCE) + b"tail"  # streamed, never read at once
SMALL = os.urandom(50_000)  # read at once
KEY = "Bearer sk-test-secret"

LOOSE = DownloadPolicy(allow_private=True)  # the test servers are on loopback


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # hooks and server, in order
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _app(server: Server) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        server.seen.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        server.events.append(f"server {request.method} {request.path}")
        result: web.StreamResponse = await handler(request)
        return result

    async def status(request: web.Request) -> web.StreamResponse:
        headers = {"X-RateLimit-Remaining": "41", "Set-Cookie": "session=abc; Path=/"}
        return web.json_response({"status": "running", "id": request.match_info["id"]},
                                 headers=headers)  # fmt: skip

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": json.loads(await request.read() or b"null")})

    async def small(request: web.Request) -> web.StreamResponse:
        return web.Response(body=SMALL, content_type="image/png")

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BIG, content_type="image/png")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(SMALL), 10_000):
            await response.write(SMALL[start : start + 10_000])
        return response

    async def gzipped(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(json.dumps({"zipped": True}).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/small")

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(server.release.wait(), 10)
        return web.json_response({"late": True})

    app = web.Application(middlewares=[record])
    app.router.add_get("/v1/tasks/{id}", status)
    app.router.add_get("/api/v1/tasks/{id}", status)
    app.router.add_post("/v1/echo", echo)
    app.router.add_put("/v1/echo", echo)
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    async with serve_app(_app(state)) as state.base:
        yield state
        state.release.set()


@pytest.fixture(params=["aiohttp", "httpx"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    backend: str = request.param
    monkeypatch.setenv("PIPELINE_HTTP_BACKEND", backend)
    return backend


@pytest.fixture
def short_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a request goes through httpx's own ``build_request``/``send``."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("took httpx's path, not the short one")

    monkeypatch.setattr(httpx.AsyncClient, "build_request", refuse)
    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)


def api_client(server: Server, **kwargs: Any) -> LeanClient:
    async def on_request(request: httpx.Request) -> None:
        server.events.append(f"request hook {request.method} {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        server.events.append(f"response hook {response.status_code} {remaining}")

    options: dict[str, Any] = {"timeout": 10, "max_connections": 8}
    options |= kwargs
    return make_api_client(server.base, headers={"Authorization": KEY},
                           on_request=on_request, on_response=on_response, **options)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- the request sent ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("short_path_only")
async def test_hooks_run_around_every_request(server: Server, backend: str) -> None:
    async with api_client(server) as client:
        response = await send(client, "GET", "/v1/tasks/t1")
        assert response.json() == {"status": "running", "id": "t1"}
        await send(client, "POST", "/v1/echo", json={"a": 1})
        assert server.events == [
            "request hook GET /v1/tasks/t1",
            "server GET /v1/tasks/t1",
            "response hook 200 41",
            "request hook POST /v1/echo",
            "server POST /v1/echo",
            "response hook 200 None",
        ]
        server.events.clear()
        await asyncio.gather(*(send(client, "GET", f"/v1/tasks/c{i}") for i in range(40)))
    assert sum(event.startswith("request hook") for event in server.events) == 40
    assert sum(event.startswith("response hook") for event in server.events) == 40


@pytest.mark.anyio
@pytest.mark.usefixtures("short_path_only")
async def test_json_body_params_and_headers_reach_the_server(server: Server, backend: str) -> None:
    payload = {"prompt": "ünïcode ☕", "seed": 7, "nested": [1.5, None]}
    async with api_client(server) as client:
        response = await send(client, "POST", "/v1/echo", json=payload, params={"q": "a b&c"})
        assert response.json() == {"got": payload}
        await send(client, "PUT", "/v1/echo")  # no body: Content-Length 0, as httpx sends
        await send(client, "GET", "/v1/tasks/t2", headers={"X-Trace": "1"})
    post, put, get = server.seen
    expected = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert post.body == expected
    assert post.query == {"q": "a b&c"}
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Content-Length"] == str(len(expected))
    assert post.headers["Authorization"] == KEY
    assert post.headers["User-Agent"].startswith("pipeline/")
    assert post.headers["Host"] == server.base.removeprefix("http://")
    assert put.headers["Content-Length"] == "0" and put.body == b""
    assert get.headers["X-Trace"] == "1" and get.headers["Authorization"] == KEY


@pytest.mark.parametrize(
    ("base_url", "url", "kwargs"),
    [
        ("http://api.test", "/v1/tasks/a b", {}),
        ("http://api.test:8080/api", "/v1/tasks/x", {"params": {"n": 1, "s": "ü"}}),
        ("https://api.test/api/", "/v1/tasks/x?keep=1", {}),
        ("http://api.test", "/v1/echo", {"json": {"k": "ü", "n": [1, 2]}}),
        ("http://api.test", "https://other.test/file.png?sig=a%2Fb", {"headers": {"Range": "x"}}),
        ("http://api.test", "/v1/echo", {"json": [], "headers": {"content-type": "text/json"}}),
        ("http://api.test", "/v1/echo", {"timeout": 3.0, "extensions": {"sni_hostname": "x"}}),
        ("", "http://cdn.test/a.png", {"headers": {"Accept-Encoding": "identity"}}),
    ],
)
def test_built_requests_equal_httpx_ones(
    base_url: str, url: str, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short path builds the very request httpx's ``build_request`` would."""
    options: dict[str, Any] = {"base_url": base_url, "headers": {"Authorization": KEY}}
    plain = httpx.AsyncClient(**options).build_request("POST", url, **kwargs)
    monkeypatch.setattr(httpx.AsyncClient, "build_request", None)  # not used by the short path
    lean = LeanClient(**options).build_request("POST", url, **kwargs)
    assert lean.url == plain.url
    assert lean.headers == plain.headers  # order aside
    assert lean.headers.raw[0][0] == b"Host"
    assert lean.content == plain.content
    assert lean.extensions == plain.extensions


def test_remembered_urls_and_headers_follow_the_client() -> None:
    client = LeanClient(base_url="http://a.test/v1", headers={"X-One": "1"})
    first = client.build_request("GET", "/tasks/1", params={"id": "a b"})
    again = client.build_request("GET", "/tasks/1", params={"id": "c"})
    assert first.url == httpx.URL("http://a.test/v1/tasks/1", params={"id": "a b"})
    assert str(again.url) == "http://a.test/v1/tasks/1?id=c"
    assert client.build_request("GET", "/tasks/1", params={}).url == "http://a.test/v1/tasks/1"
    client.base_url = "http://b.test:81/v2"
    client.headers["X-Two"] = "2"
    moved = client.build_request("GET", "/tasks/1")
    assert str(moved.url) == "http://b.test:81/v2/tasks/1"
    assert moved.headers["Host"] == "b.test:81" and moved.headers["X-Two"] == "2"


@pytest.mark.parametrize("url", ["v1/relative", "//other.test/x", "/p#frag", "ftp://x.test/f"])
def test_unusual_urls_take_httpx_path(url: str) -> None:
    lean = LeanClient(base_url="http://api.test/base").build_request("GET", url)
    plain = httpx.AsyncClient(base_url="http://api.test/base").build_request("GET", url)
    assert lean.url == plain.url and lean.headers == plain.headers


# --- the response received -------------------------------------------------------------


@pytest.mark.anyio
async def test_responses_are_complete_httpx_responses(server: Server, backend: str) -> None:
    async with api_client(server) as client:
        response = await client.get("/v1/tasks/r1")
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1"
    assert response.request.url == server.url("/v1/tasks/r1")
    assert response.is_closed and response.elapsed.total_seconds() > 0
    assert response.num_bytes_downloaded == len(response.content)
    assert response.json()["id"] == "r1" and response.text.startswith("{")


@pytest.mark.anyio
async def test_compressed_body_is_decoded(server: Server, backend: str) -> None:
    async with api_client(server) as client:
        response = await client.get("/gzip")
    assert response.json() == {"zipped": True}


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/small", "/chunked", "/big"])
@pytest.mark.usefixtures("short_path_only")
async def test_bodies_read_whole_or_streamed(server: Server, backend: str, path: str) -> None:
    body = BIG if path == "/big" else SMALL
    async with make_download_client(timeout=10, max_connections=2) as client:
        assert (await client.get(server.url(path))).content == body
        async with client.stream("GET", server.url(path)) as response:
            assert [piece async for piece in response.aiter_bytes()] != []
        async with client.stream("GET", server.url(path)) as response:
            pieces = [piece async for piece in response.aiter_raw()]
        assert b"".join(pieces) == body
        assert response.is_closed and response.elapsed.total_seconds() > 0
    if path == "/big" and backend == "aiohttp":  # whole socket reads, not 16 KiB pieces
        assert len(pieces) >= 2 and max(map(len, pieces)) > 16 * 1024


@pytest.mark.anyio
async def test_download_of_a_small_body_read_at_once(
    server: Server, backend: str, tmp_path: Path
) -> None:
    """``download`` streams with ``send(stream=True)``; a body read at once by the
    transport comes out of ``aiter_bytes`` all the same."""
    async with make_download_client(timeout=10, max_connections=2) as client:
        for path, body in (("/small", SMALL), ("/big", BIG)):
            dest = tmp_path / path.strip("/")
            output = await download(client, OutputRef(server.url(path)), dest, job_id="j",
                                    index=0, rel_path=dest.name, policy=LOOSE)  # fmt: skip
            assert dest.read_bytes() == body and output.size == len(body)


# --- redirects -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("short_path_only")
async def test_download_client_follows_redirects(
    server: Server, backend: str, tmp_path: Path
) -> None:
    async with make_download_client(timeout=10, max_connections=2) as client:
        response = await client.get(server.url("/redirect"))
        assert response.content == SMALL and response.url == server.url("/small")
        assert [hop.status_code for hop in response.history] == [302]
        dest = tmp_path / "out.png"
        await download(client, OutputRef(server.url("/redirect")), dest,
                       job_id="j", index=0, rel_path="out.png", policy=LOOSE)  # fmt: skip
        assert dest.read_bytes() == SMALL
        with pytest.raises(httpx.TooManyRedirects):
            await client.get(server.url("/loop"))


@pytest.mark.anyio
async def test_hooks_run_for_every_hop(server: Server, backend: str) -> None:
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"response {response.status_code}")

    async with make_download_client(timeout=10, max_connections=2) as client:
        client.event_hooks = {"request": [on_request], "response": [on_response]}
        await client.get(server.url("/redirect"))
    assert seen == ["request /redirect", "response 302", "request /small", "response 200"]


@pytest.mark.anyio
async def test_api_client_does_not_follow_redirects(server: Server, backend: str) -> None:
    async with api_client(server) as client:
        response = await client.get("/redirect")
    assert response.status_code == 302
    assert response.next_request is not None and response.next_request.url.path == "/small"


# --- errors and timeouts ---------------------------------------------------------------


@pytest.mark.anyio
async def test_refused_connection_was_unsent(backend: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with make_api_client(url, headers={}, timeout=5, max_connections=2) as client:
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)) as caught:
            await client.post("/v1/echo", json={})  # httpx-aiohttp maps it to the latter
        assert request_was_unsent(caught.value)
        assert caught.value.request.url == f"{url}/v1/echo"
        if backend == "aiohttp":
            assert type(caught.value.__cause__).__module__.startswith("aiohttp")
        with pytest.raises(TransientError):  # not SubmitUnknown: nothing was sent
            await send(client, "POST", "/v1/echo", submit=True, json={})


@pytest.mark.anyio
async def test_hang_up_after_request_is_unknown(backend: str) -> None:
    received: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        received.append(await reader.readexactly(length))
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with make_api_client(f"http://127.0.0.1:{port}", headers={}, timeout=5,
                                   max_connections=2) as client:  # fmt: skip
            with pytest.raises(httpx.TransportError) as caught:
                await client.post("/v1/echo", json={"n": 1})
            assert not request_was_unsent(caught.value)
            with pytest.raises(SubmitUnknown):
                await send(client, "POST", "/v1/echo", submit=True, json={"n": 2})
    finally:
        listener.close()
        await listener.wait_closed()
    assert received == [b'{"n":1}', b'{"n":2}']


@pytest.mark.anyio
async def test_timeouts_apply(server: Server, backend: str) -> None:
    async with api_client(server, timeout=0.3) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get("/slow")
    async with api_client(server, timeout=30) as client:
        with pytest.raises(httpx.TimeoutException):  # the per-request timeout extension
            await client.get("/slow", timeout=0.3)
        with pytest.raises(TransientError, match="Timeout"):
            await send(client, "GET", "/slow", timeout=0.3)


@pytest.mark.anyio
async def test_closed_client_refuses_to_send(server: Server) -> None:
    client = api_client(server)
    async with client:
        await client.get("/v1/tasks/a")
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("/v1/tasks/a")


# --- credentials (contract 5) ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("short_path_only")
async def test_download_requests_carry_no_credentials(
    server: Server, backend: str, tmp_path: Path
) -> None:
    async with api_client(server) as api, make_download_client(timeout=10, max_connections=2) as dl:
        await api.get("/v1/tasks/t3")  # answers with Set-Cookie
        await dl.get(server.url("/v1/tasks/t4"))  # so does this one
        await download(dl, OutputRef(server.url("/redirect")), tmp_path / "a.png",
                       job_id="j", index=0, rel_path="a.png", policy=LOOSE)  # fmt: skip
        await dl.get(server.url("/small"))
        assert not dl.cookies and not api.cookies  # no cookies kept from any answer
    api_seen, *download_seen = server.seen
    assert api_seen.headers["Authorization"] == KEY
    assert [seen.path for seen in download_seen] == [
        "/v1/tasks/t4",
        "/redirect",
        "/small",
        "/small",
    ]
    for seen in download_seen:
        assert not {name.lower() for name in seen.headers} & {"authorization", "cookie"}


@pytest.mark.anyio
async def test_credentials_on_a_misused_lean_client_are_stripped(
    server: Server, backend: str, tmp_path: Path
) -> None:
    async with make_download_client(timeout=10, max_connections=2) as misused:
        misused.headers.update({"Authorization": KEY, "X-API-Key": "k"})
        await download(misused, OutputRef(server.url("/redirect")), tmp_path / "a.png",
                       job_id="j", index=0, rel_path="a.png", policy=LOOSE)  # fmt: skip
    assert [seen.path for seen in server.seen] == ["/redirect", "/small"]
    for seen in server.seen:
        assert not {name.lower() for name in seen.headers} & {"authorization", "x-api-key"}


# --- other transports ------------------------------------------------------------------


@pytest.mark.anyio
async def test_lean_client_over_a_mock_transport() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"echo": json.loads(request.content)})

    async with LeanClient(base_url="http://mock.test", transport=httpx.MockTransport(handler)) as c:
        response = await send(c, "POST", "/v1/x", json={"a": 1})
    assert response.status_code == 201 and response.json() == {"echo": {"a": 1}}


@pytest.mark.anyio
async def test_transport_under_a_plain_httpx_client(server: Server) -> None:
    transport = AiohttpTransport(httpx.Limits(max_connections=2))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(server.url("/small"))).content == SMALL
        async with client.stream("GET", server.url("/big")) as response:
            assert b"".join([piece async for piece in response.aiter_bytes()]) == BIG


PLAIN_URLS = [
    "http://127.0.0.1:18778/v1/generate/gen_506cea7da215",
    "http://EXAMPLE.com:80/a/b.png?x=1&y=%2F",
    "https://cdn.example.com/files/a%20b.png",
    "http://[::1]:8080/x",
    "https://h:443/p?",
    "http://h/%7e",
]
OTHER_URLS = [  # parsed by httpx
    "http://h/x?a=%zz",
    "http://h/a/../b",
    "http://h/./b",
    "http://h/a b",
    "http://h",
    "http://h/x?q=a b",
    "http://user:pw@h/x",
    "http://h/x#frag",
    "http://h/ä.png",
]


@pytest.mark.parametrize("url", PLAIN_URLS + OTHER_URLS)
def test_urls_built_without_parsing_equal_httpx_s(url: str) -> None:
    """Result and status URLs are built from their origin's parsed form when the rest
    needs no quoting; they must be exactly what httpx makes of the same string."""
    client = LeanClient()
    ours, theirs = client._parse(url), httpx.URL(url)
    assert ours == theirs and str(ours) == str(theirs)
    assert (ours.raw_path, ours.host, ours.port, ours.query, ours.netloc) == (
        theirs.raw_path, theirs.host, theirs.port, theirs.query, theirs.netloc,
    )  # fmt: skip
