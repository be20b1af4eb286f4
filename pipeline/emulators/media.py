"""The media store: outputs registered at submit, rendered on first download, cached.

Files are named by unguessable tokens. When ``url_ttl`` is set, the URLs handed out
carry an expiry and a signature (``?expires=…&sig=…``), like a presigned CDN URL;
each poll hands out a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.emulators.codec import media_doc, media_from_doc
from pipeline.emulators.render import Media

__all__ = ["Journal", "MediaStore", "Rendered"]

Journal = Callable[[str, str, Any], None]
"""Takes (kind, id, document) of every object added, for the state file."""

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Rendered:
    """A file's bytes with its validator."""

    body: bytes
    etag: str
    content_type: str


class MediaStore:
    """Media by token, with an LRU cache of rendered bytes bounded in size."""

    def __init__(self, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.cache_bytes = cache_bytes
        self._media: dict[str, Media] = {}
        self._aliases: dict[str, str] = {}
        self._cache: OrderedDict[tuple[str, bool, int | None], Rendered] = OrderedDict()
        self._cached = 0
        self._secret = secrets.token_bytes(16)
        self._handed: dict[str, int] = {}  # token → result URLs handed out so far
        self.journal: Journal | None = None

    def __len__(self) -> int:
        return len(self._media)

    def add(self, media: Media) -> str:
        """Register an output (nothing is rendered yet); returns its token."""
        token = secrets.token_hex(10)
        self._media[token] = media
        if self.journal is not None:
            self.journal("media", token, media_doc(media))
        return token

    def alias(self, name: str, token: str) -> None:
        """Another name for a token's file (e.g. a permanent mirror's id)."""
        self._aliases[name] = token
        if self.journal is not None:
            self.journal("alias", name, token)

    @property
    def secret(self) -> str:
        """The URL-signing key (hex), kept with the state so signed URLs outlive a restart."""
        return self._secret.hex()

    def restore(
        self, secret: str, media: Iterable[tuple[str, Any]], aliases: Iterable[tuple[str, Any]]
    ) -> None:
        """Take back the signing key, media specs and aliases a state file kept."""
        self._secret = bytes.fromhex(secret)
        self._media.update((token, media_from_doc(doc)) for token, doc in media)
        self._aliases.update((name, str(token)) for name, token in aliases)

    def resolve(self, name: str) -> str | None:
        """The token an alias names, or None."""
        return self._aliases.get(name)

    def media(self, token: str) -> Media | None:
        return self._media.get(token)

    def path(self, token: str, *, now: float, ttl: float | None, stale: int = 0) -> str:
        """The URL path (with query) for a token, signed with an expiry when ``ttl`` is set.

        The first ``stale`` URLs of each token are handed out already expired."""
        media = self._media[token]
        path = f"/files/{token}{media.suffix}"
        handed = self._handed[token] = self._handed.get(token, 0) + 1
        if handed <= stale:
            expires = handed  # long past, and a new URL each time
        elif ttl is None:
            return path
        else:
            expires = int(now + ttl)
        return f"{path}?expires={expires}&sig={self._sign(token, expires)}"

    def signature_ok(self, token: str, expires: str, sig: str) -> bool:
        if not expires.isdigit():
            return False
        return hmac.compare_digest(self._sign(token, int(expires)), sig)

    async def rendered(self, token: str, *, draw: bool, pad_to: int | None) -> Rendered:
        """The file's bytes: cached, or rendered now (drawing happens off the event loop)."""
        key = (token, draw, pad_to)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        media = self._media[token]
        if draw:
            body = await asyncio.to_thread(media.render, draw=True)
        else:
            body = media.render(draw=False)
        body = media.pad(body, pad_to)
        done = Rendered(body, f'"{zlib.crc32(body):08x}-{len(body):x}"', media.content_type)
        self._remember(key, done)
        return done

    def clear(self) -> None:
        self._media.clear()
        self._aliases.clear()
        self._cache.clear()
        self._cached = 0

    def _remember(self, key: tuple[str, bool, int | None], done: Rendered) -> None:
        if key in self._cache:
            return
        self._cache[key] = done
        self._cached += len(done.body)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old.body)

    def _sign(self, token: str, expires: int) -> str:
        message = f"{token}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:24]
