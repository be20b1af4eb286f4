"""API answers are read up to a byte cap (``providers.X.limits.max_response_bytes``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from pipeline.errors import ResponseTooLarge, SubmitUnknown, TransientError
from pipeline.http.client import make_api_client, send

from .conftest import serve_app

HUGE = b'{"status": "running", "pad": "' + b"x" * (20 << 20) + b'"}'


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=HUGE, content_type="application/json")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"pad": "')
        while True:
            await response.write(b"x" * 65536)

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/huge", huge)
    app.router.add_get("/endless", endless)
    app.router.add_get("/small", small)
    app.router.add_post("/huge", huge)
    async with serve_app(app) as url:
        yield url


@pytest.mark.anyio
async def test_a_huge_status_body_is_a_transient_error_by_default(base: str) -> None:
    async with make_api_client(base, headers={}, timeout=10, max_connections=2) as client:
        with pytest.raises(TransientError) as caught:
            await send(client, "GET", "/huge")
        assert isinstance(caught.value, ResponseTooLarge)
        assert (await send(client, "GET", "/small")).json() == {"ok": True}


@pytest.mark.anyio
async def test_an_endless_body_stops_at_the_cap(base: str) -> None:
    async with make_api_client(
        base, headers={}, timeout=10, max_connections=2, max_response_bytes=1 << 20
    ) as client:
        with anyio.fail_after(20), pytest.raises(ResponseTooLarge, match="1048576"):
            await send(client, "GET", "/endless")


@pytest.mark.anyio
async def test_a_huge_answer_to_a_submit_leaves_its_outcome_unknown(base: str) -> None:
    async with make_api_client(base, headers={}, timeout=10, max_connections=2) as client:
        with pytest.raises(SubmitUnknown, match="cap"):
            await send(client, "POST", "/huge", submit=True, json={"prompt": "x"})
