"""A tiny static file server (aiohttp, sendfile) in its own process, for download
benchmarks: ``python -m benchmarks.fileserver DIR`` prints ``files URL`` and serves
``URL/<name>`` from DIR with Content-Length and Range, like a CDN.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web


def make_app(root: Path) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["name"]).resolve()
        if path.parent != root or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, chunk_size=1 << 20)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    return app


async def main(root: Path) -> None:
    runner = web.AppRunner(make_app(root.resolve()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"files http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
