"""Room: HTTP clients (httpx's API over an aiohttp transport) and the boundary where
transport errors become ours. httpx and aiohttp's client live here."""

from pipeline.http.client import (
    LeanClient,
    make_api_client,
    make_download_client,
    request_was_unsent,
    send,
)

__all__ = ["LeanClient", "make_api_client", "make_download_client", "request_was_unsent", "send"]
