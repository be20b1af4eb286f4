"""Fetch one output into place without ever losing it (contract 3 in
docs/architecture.md).

The body streams into ``<dest>.part`` while its sha256 and length are computed; a
``.part`` left by an earlier attempt resumes with ``Range`` when the server allows it.
Only a body that verifies (length, checksum, content type) is fsynced and renamed onto
``dest``, and the directory is fsynced after the rename. The client given here must be a
plain one: API keys are never sent to download hosts (contract 5), and credential
headers are stripped from the request even if a client carries them.

Writes: plain blocking writes land in the page cache in well under a millisecond, so
they are both the fastest and the gentlest on the loop (a thread hop per chunk costs
more than it saves). What does wait for the disk (fsync, rename, directory sync,
re-hashing an old ``.part``, starting writeback) runs in a worker thread, in as few
hops as possible (``_PartBody``): past the 1 MiB held in memory, the worker hashes and
writes each 1 MiB batch while the loop gathers the next. The measurements behind
these choices: benchmarks/RESULTS.md, section "outputs/download.py".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import anyio
import anyio.abc
import httpx

from pipeline.errors import DownloadError, DownloadTooLarge, VerificationError
from pipeline.failpoints import failpoint
from pipeline.fsio import fsync_dir, write_atomic_text
from pipeline.http import request_was_unsent
from pipeline.models import Output, OutputRef
from pipeline.outputs.durable import Committer
from pipeline.outputs.guard import DEFAULT_POLICY, DownloadPolicy, Hop, check_hop
from pipeline.outputs.media_end import TAIL, incomplete_media, media_kind
from pipeline.outputs.resume import (
    int_or_none,
    is_stale,
    parse_content_range,
    read_validator,
    resume_headers,
    validator_of,
    validator_path,
)
from pipeline.retry import parse_retry_after

__all__ = [
    "Committer",
    "download",
    "download_retry_verdict",
    "part_path",
    "sidecar_path",
    "sidecar_text",
    "validator_path",
    "write_sidecar",
]

_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_GONE_STATUSES = frozenset({403, 404, 410})
_SECRET_NAME = re.compile(rb"authorization|cookie|api-?key|token|secret", re.IGNORECASE)
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_ERROR_PAGE_TYPES = ("text/html", "application/json", "application/xml", "text/xml")
_REDACTED_KEYS = frozenset(
    {"api_key", "apikey", "x-api-key", "authorization", "password", "secret", "access_token"}
)
_HASH_BLOCK = 1 << 20
_HOLD = 1 << 20  # bytes held in memory before the .part is opened (small bodies: all)
_BATCH = 1 << 20  # bytes per worker hop past that (``_PartBody._pump``)
_HEAD = 64  # bytes looked at for an error page
_WRITEBACK_STEP = 16 << 20  # start the disk's writeback every this many bytes
_FADVISE = getattr(os, "posix_fadvise", None)  # Linux and most Unix; not macOS/Windows


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Span:
    """Where the response body goes in the file and how long the file must end up."""

    start: int  # byte offset the body starts at (0, or the resumed .part length)
    total: int | None  # the whole file's length, when the server said it
    content_type: str | None
    framed: bool = True  # a Content-Length or chunked body: its end is proven by the transport
    validator: str = "{}"  # what identifies this version of the file (``_validator_of``)
    limit: int = DEFAULT_POLICY.max_bytes


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` live until they verify."""
    return dest.with_name(dest.name + ".part")


async def download(
    client: httpx.AsyncClient,
    ref: OutputRef,
    dest: Path,
    *,
    job_id: str,
    index: int,
    rel_path: str,
    chunk_size: int = _HOLD,
    sidecar: Callable[[Output], Mapping[str, Any]] | None = None,
    committer: Committer | None = None,
    policy: DownloadPolicy = DEFAULT_POLICY,
) -> Output:
    """Download ``ref`` to ``dest``, verified, fsynced and renamed into place.

    Raises ``DownloadError`` (``transient`` says whether a retry may help, with the
    server's ``retry_after``) and ``VerificationError`` when the bytes are not what was
    promised. A partial ``.part`` that may be resumed is kept for the next attempt.
    Up to ``chunk_size`` bytes are held in memory before they are written: a body that
    fits is written in one go by the final hop, and bytes held when a transfer breaks
    are not kept for resuming.

    ``policy`` decides which hosts may be fetched (each redirect hop is checked and the
    connection pinned to the checked address) and how many bytes the output may have.

    ``sidecar``, given the verified ``Output``, returns the provenance to write beside
    it (``<dest>.json``, as ``write_sidecar`` does); it is written in the same worker hop
    as the output, and one directory fsync makes both renames durable. With a
    ``committer`` that hop is shared with the other downloads finishing meanwhile.
    """
    part = part_path(dest)
    offset = _part_length(part)
    if ref.size is not None and ref.size > policy.max_bytes:
        raise _too_large(policy.max_bytes)
    try:
        body = await _fetch_to_part(client, ref, part, offset, chunk_size, policy=policy)
    except httpx.InvalidURL as exc:
        raise DownloadError(f"invalid result URL: {exc}", transient=False) from exc
    except (httpx.TooManyRedirects, httpx.UnsupportedProtocol) as exc:
        raise DownloadError(f"cannot follow result URL: {exc}", transient=False) from exc
    except httpx.HTTPError as exc:
        raise DownloadError(f"download interrupted: {_describe(exc)}", transient=True) from exc
    digest = body.hasher.hexdigest()
    output = Output(job_id, index, rel_path, body.size, digest, url=ref.url, content_type=body.type)
    provenance = sidecar(output) if sidecar is not None else None
    try:
        if committer is not None:
            await committer.commit(body, dest, provenance)
        else:
            await anyio.to_thread.run_sync(body.commit, dest, provenance)
    finally:
        body.close()
    return output


async def _fetch_to_part(
    client: httpx.AsyncClient,
    ref: OutputRef,
    part: Path,
    offset: int,
    hold: int,
    *,
    policy: DownloadPolicy,
) -> _PartBody:
    """Fetch the body into ``part`` (resuming it if possible) and verify it.

    A resume sends ``If-Range`` with the validator stored beside the ``.part``; a 416,
    or a 206 whose start, total or validator differ from it, means the file changed or
    our ``.part`` is no prefix of it: the ``.part`` is dropped and the file fetched whole.
    A ``.part`` without a stored validator is never resumed."""
    validator = read_validator(part) if offset else None
    if offset and validator is None:  # no way to tell which file it is a prefix of
        await anyio.to_thread.run_sync(_unlink_part, part)
        offset = 0
    response = await _send(client, ref.url, offset, validator, policy)
    if offset and is_stale(response.status_code, _fields(response.headers), offset, validator):
        await response.aclose()
        await anyio.to_thread.run_sync(_unlink_part, part)
        offset = 0
        response = await _send(client, ref.url, offset, None, policy)
    body: _PartBody | None = None
    try:
        try:
            fields = _fields(response.headers)
            _raise_for_status(response, fields)
            span = _span_of(response.status_code, fields, ref, policy.max_bytes)
            if span.start not in (offset, 0):
                await anyio.to_thread.run_sync(_unlink_part, part)
                raise VerificationError(f"server resumed at byte {span.start}, not {offset}")
            generic = span.content_type in (None, *_GENERIC_TYPES)  # check the head
            body = await _PartBody.open(part, span, offset, hold, generic)
            await body.receive(response.aiter_bytes())
        finally:
            await response.aclose()
        await _verify_or_discard(body, ref)
    except BaseException as exc:
        if body is not None:
            body.close()
        if isinstance(exc, DownloadTooLarge):  # final for this URL: nothing to resume
            await anyio.to_thread.run_sync(_unlink_part, part)
        raise
    return body


def _too_large(limit: int) -> DownloadTooLarge:
    return DownloadTooLarge(
        f"the output is larger than the download cap of {limit} bytes "
        "(providers.<name>.limits.max_download_bytes)"
    )


class _PartBody:
    """The body on its way into ``part``: hashed, written, not yet durable.

    The first ``hold`` bytes stay in memory, so a small body costs one thread hop
    (``commit``: write what is held, the sidecar too, fsync, close, rename, directory
    fsync; a hop costs the loop far more than a write) and the error-page check sees a
    whole head, however the server split it. A body that outgrows ``hold`` goes to a
    worker thread in batches, which hashes and writes them (opening the file with the
    first) and every ``_WRITEBACK_STEP`` bytes asks the kernel to start writing them
    back, so the final fsync finds little left to do (``_pump``, ``_write``).
    """

    def __init__(
        self, part: Path, span: _Span, hasher: _Hasher, file: IO[bytes] | None, hold: int, *,
        check_head: bool,
    ) -> None:  # fmt: skip
        self.part = part
        self.start = span.start
        self.total = span.total
        self.type = span.content_type
        self.hasher = hasher
        self.size = span.start  # the file's length once everything held is written
        self._file = file
        self._hold = hold
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._check_head = check_head and span.start == 0
        self._in_file = span.start  # bytes the worker wrote (``_write``)
        self._written_back = span.start  # bytes the kernel was asked to write back
        self._write_error: Exception | None = None
        self.framed = span.framed
        self._validator = span.validator
        self._limit = span.limit
        self.head = b""  # the file's first bytes (its media type, ``media_end``)
        self._file_tail = b""  # the last bytes in the file (``_write``, ``_open_at``)

    @classmethod
    async def open(
        cls, part: Path, span: _Span, offset: int, hold: int, generic: bool
    ) -> _PartBody:
        """A fresh body (no ``.part`` was there) opens its file only when it must.

        A resumed one hashes the kept prefix and opens the file at its end; one that
        restarts over a stale ``.part`` truncates it now, so that no attempt can later
        resume from bytes of another body.
        """
        if span.start == 0 and offset == 0:
            return cls(part, span, hashlib.sha256(), None, hold, check_head=generic)
        hasher, file, head, tail = await anyio.to_thread.run_sync(
            _open_at, part, span.start, span.validator
        )
        body = cls(part, span, hasher, file, hold, check_head=generic)
        body.head, body._file_tail = head, tail
        return body

    async def receive(self, pieces: AsyncIterator[bytes]) -> None:
        """Take the whole body: held while it fits in ``hold``, hashed in the loop at the
        end; past ``hold``, handed to a worker thread in batches (``_pump``)."""
        held = self._held
        room = self._limit - self.size
        async for piece in pieces:
            held.append(piece)
            self._held_bytes += len(piece)
            if self._held_bytes > room:
                raise _too_large(self._limit)
            if self._held_bytes >= self._hold:
                break
        else:
            self.size += self._held_bytes
            self._note_head()
            await self._refuse_error_page()
            for piece in held:
                self.hasher.update(piece)
            return
        self._note_head()
        await self._refuse_error_page()
        await self._pump(pieces)

    def _note_head(self) -> None:
        if self.start == 0:
            self.head = _head(self._held)

    def tail(self) -> bytes:
        """The body's last ``TAIL`` bytes (held ones, after those in the file)."""
        return _last_bytes(self._held, TAIL, self._file_tail)

    def read_all_into_file(self) -> None:
        """In a worker: put what is held into the ``.part`` (opening it if need be), so
        that it can be read back whole (``media_end`` walks an MP4's boxes)."""
        if self._file is None:
            self._file = _open_part(self.part, 0, self._validator)
        self._file.writelines(self._held)
        self._held.clear()
        self._file.flush()

    async def _pump(self, pieces: AsyncIterator[bytes]) -> None:
        """The rest of a body that outgrew ``hold``: the loop only receives, and a
        worker thread hashes and writes batches of ``_BATCH`` bytes, one at a time and
        in order, while the loop gathers the next (at most two batches in memory).

        The loop is the bottleneck of a download: hashing and writing there slow its
        receiving; both release the GIL, so in the worker they run beside it
        (benchmarks/RESULTS.md, section "outputs/download.py").

        A network error stops the receiving, what arrived is still written (a
        resumable prefix), and the error is raised once the worker is done; a write
        error stops both.
        """
        send, receive = anyio.create_memory_object_stream[list[bytes]]()
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._drain, receive)
            try:
                async with send:
                    batch, self._held = self._held, []
                    size, self._held_bytes = self._held_bytes, 0
                    room = self._limit - self.size
                    try:
                        async for piece in pieces:
                            batch.append(piece)
                            size += len(piece)
                            if size > room:  # past the cap: nothing more is written
                                failure, batch, size = _too_large(self._limit), [], 0
                                break
                            if size >= _BATCH:
                                room -= size
                                self.size += size
                                await send.send(batch)
                                batch, size = [], 0
                    except anyio.BrokenResourceError:
                        raise
                    except Exception as exc:  # raised as itself, not in an exception group
                        failure = exc
                    self.size += size
                    await send.send(batch)
            except anyio.BrokenResourceError:
                pass  # the worker stopped on a write error, raised below
        if self._write_error is not None:
            raise self._write_error
        if failure is not None:
            raise failure

    async def _drain(self, batches: anyio.abc.ObjectReceiveStream[list[bytes]]) -> None:
        async with batches:
            async for batch in batches:
                try:  # a worker hop is not cancellable: the file is never closed under it
                    await anyio.to_thread.run_sync(self._write, batch)
                except Exception as exc:
                    self._write_error = exc
                    return

    def _write(self, batch: list[bytes]) -> None:
        """In the worker: hash and write one batch; every ``_WRITEBACK_STEP`` bytes,
        have the kernel start writing back what was written since the last time.

        ``POSIX_FADV_DONTNEED`` starts writeback of the range at once without waiting
        for it (and forgets pages that are already clean); without it the bytes sit
        dirty until the final fsync, which then waits for all of them with the network
        idle. Durability stays the final fsync's job; this only moves the
        disk's work under the network's.
        """
        file = self._file
        if file is None:
            file = self._file = _open_part(self.part, 0, self._validator)
        self._file_tail = _last_bytes(batch, TAIL, self._file_tail)
        update = self.hasher.update
        for piece in batch:
            update(piece)
        file.writelines(batch)
        failpoint("download.part_written")
        self._in_file += sum(map(len, batch))
        if _FADVISE is not None and self._in_file - self._written_back >= _WRITEBACK_STEP:
            _FADVISE(file.fileno(), self._written_back, 0, os.POSIX_FADV_DONTNEED)
            self._written_back = self._in_file

    async def _refuse_error_page(self) -> None:
        if not self._check_head:
            return
        self._check_head = False
        try:
            _refuse_error_page(_head(self._held))
        except VerificationError:
            if self._file is not None:  # a stale .part, truncated: not a prefix either
                self.close()
                await anyio.to_thread.run_sync(_unlink_part, self.part)
            raise

    def keep_prefix(self) -> None:
        """A short body: keep what arrived as a resumable prefix (when there is a file)."""
        if self._file is not None and self._held:
            self._file.writelines(self._held)
            self._held.clear()

    def commit(
        self, dest: Path, provenance: Mapping[str, Any] | None = None, *, sync_dir: bool = True
    ) -> None:
        """In a worker thread: write what is held, fsync, close, rename, fsync the dir
        (unless ``sync_dir`` is False: then the caller must, before trusting the rename).

        With ``provenance``, its sidecar is written and fsynced beside the output first;
        the output is renamed into place before the sidecar, so a sidecar never
        describes a file that is not there, and one directory fsync covers both.

        A body that was only ever held is written with bare ``os`` calls (open, write,
        fsync, close), as is the sidecar: a Python file object adds an fstat, an ioctl
        and a seek, and every system call here hands the GIL to the event loop and back.
        """
        if self._file is None:
            _write_durably(self.part, self._held, make_dirs=True)
            self._held.clear()
        else:
            file = self._file
            try:
                file.writelines(self._held)
                self._held.clear()
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()
            validator_path(self.part).unlink(missing_ok=True)
        if provenance is None:
            os.replace(self.part, dest)
        else:
            sidecar = sidecar_path(dest)
            temporary = sidecar.with_name(f".{sidecar.name}.tmp")
            try:
                _write_durably(temporary, [sidecar_text(provenance).encode("utf-8")])
                os.replace(self.part, dest)
                os.replace(temporary, sidecar)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        if sync_dir:
            fsync_dir(dest.parent)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _head(pieces: list[bytes]) -> bytes:
    head = b""
    for piece in pieces:
        head += piece[: _HEAD - len(head)]
        if len(head) >= _HEAD:
            break
    return head


def _last_bytes(pieces: list[bytes], count: int, before: bytes = b"") -> bytes:
    """The last ``count`` bytes of ``before`` followed by ``pieces``, copying little."""
    tail = b""
    for piece in reversed(pieces):
        tail = piece[-(count - len(tail)) :] + tail
        if len(tail) >= count:
            return tail
    return (before + tail)[-count:]


async def _send(
    client: httpx.AsyncClient,
    url: str,
    offset: int,
    validator: Mapping[str, Any] | None,
    policy: DownloadPolicy,
) -> httpx.Response:
    """GET ``url``, following redirects here so that every hop is checked and pinned
    (``outputs.guard``)."""
    headers = {"Accept-Encoding": "identity", **resume_headers(offset, validator)}
    target = httpx.URL(url)
    for _ in range(policy.max_redirects + 1):
        hop = await check_hop(target, policy)
        response = await _send_pinned(client, hop, headers)
        if not response.is_redirect:
            return response
        location = response.headers["location"]
        await response.aclose()
        target = target.join(location)
    raise DownloadError(f"more than {policy.max_redirects} redirects", transient=False)


async def _send_pinned(
    client: httpx.AsyncClient, hop: Hop, headers: Mapping[str, str]
) -> httpx.Response:
    """Send to the hop's checked addresses in turn, while the connection fails."""
    extensions = {"sni_hostname": hop.sni} if hop.sni else None
    for index, connect in enumerate(hop.connects):
        request = client.build_request(
            "GET", connect, headers={**headers, "Host": hop.host}, extensions=extensions
        )
        _strip_credentials(request.headers)
        try:
            return await client.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.TransportError as exc:
            if index + 1 == len(hop.connects) or not request_was_unsent(exc):
                raise
    raise AssertionError("a hop has at least one address")  # pragma: no cover


def _strip_credentials(headers: httpx.Headers) -> None:
    """Contract 5: nothing that looks like a credential goes to a download host.

    One regex search over all the names decides whether there is anything to do (a
    plain client's request has nothing), without decoding each header."""
    if not _SECRET_NAME.search(b"\n".join([name for name, _ in headers.raw])):
        return
    for name in list(headers.keys()):
        if _SECRET_NAME.search(name.encode("latin-1")):
            del headers[name]


def _fields(headers: httpx.Headers) -> dict[str, str]:
    """The response's headers by lower-cased name, repeated ones joined with ", " as
    ``httpx.Headers.get`` does. Read from the raw pairs once: each ``get`` on
    ``httpx.Headers`` decodes every header again. The fields read here are ASCII."""
    fields: dict[str, str] = {}
    for raw_name, raw_value in headers.raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _raise_for_status(response: httpx.Response, fields: Mapping[str, str]) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    what = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in _TRANSIENT_STATUSES or status >= 500:
        retry_after = parse_retry_after(fields.get("retry-after"), now=time.time())
        raise DownloadError(f"{what} from download host", transient=True, retry_after=retry_after)
    if status in _GONE_STATUSES:
        raise DownloadError(f"{what}: result URL expired or forbidden", transient=False)
    if status == 401:
        hint = "the download host wants credentials (API keys are never sent to it)"
        raise DownloadError(f"{what}: {hint}", transient=False)
    raise DownloadError(f"{what}: unexpected answer from download host", transient=False)


def _span_of(status: int, fields: Mapping[str, str], ref: OutputRef, limit: int) -> _Span:
    content_type = _media_type(fields.get("content-type"))
    _check_content_type(content_type, ref)
    encoded = fields.get("content-encoding", "identity").lower() != "identity"
    length = None if encoded else int_or_none(fields.get("content-length"))
    chunked = "chunked" in fields.get("transfer-encoding", "").lower()
    framed = chunked or "content-length" in fields
    start, total = 0, length
    if status == 206:
        start_or_none, total = parse_content_range(fields.get("content-range"))
        if start_or_none is None:
            raise VerificationError("206 answer without a readable Content-Range")
        start = start_or_none
        if total is None and length is not None:
            total = start + length
    if total is not None and total > limit:
        raise _too_large(limit)
    validator = validator_of(fields, total)
    return _Span(start, total, content_type, framed, validator, limit)


def _media_type(header: str | None) -> str | None:
    if header is None:
        return None
    return header.split(";")[0].strip().lower() or None


def _check_content_type(actual: str | None, ref: OutputRef) -> None:
    """An HTML page is never an output; JSON/XML is not one when media was expected."""
    if actual == "text/html":
        raise VerificationError(f"expected {ref.content_type or 'media'}, got an HTML page")
    expected = (ref.content_type or "").strip().lower()
    if not expected or (actual or "") in _GENERIC_TYPES:
        return
    if actual in _ERROR_PAGE_TYPES or _family(actual or "") != _family(expected):
        raise VerificationError(f"expected content type {expected}, got {actual}")


def _family(media_type: str) -> str:
    return media_type.partition("/")[0]


def _refuse_error_page(head: bytes) -> None:
    """A generically-typed body that starts like HTML or JSON is an error page."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"{", b"[")):
        raise VerificationError("expected media, got what looks like an HTML/JSON error page")


async def _verify_or_discard(body: _PartBody, ref: OutputRef) -> None:
    digest = body.hasher.hexdigest()
    problem, resumable = _verify(ref, body.total, body.size, digest)
    if problem is None:
        problem = await _incomplete(body, ref)
        resumable = not body.framed  # a valid prefix; framed and cut: the length lied
    if problem is None:
        return
    if resumable:
        body.keep_prefix()
    else:
        body.close()
        await anyio.to_thread.run_sync(_unlink_part, body.part)
    raise VerificationError(problem)


async def _incomplete(body: _PartBody, ref: OutputRef) -> str | None:
    """Why the body may be cut short though its length checked out, or None.

    A PNG must end with IEND and an MP4's boxes must add up to its length (a lying
    Content-Length is caught so). A body with no length that ended when the connection
    closed (neither Content-Length nor chunked) proves nothing: it is trusted only when
    the provider gave its size or checksum (checked in ``_verify``) or its media type's
    own end was seen."""
    kind = media_kind(body.head)
    if kind == "mp4":
        problem = await anyio.to_thread.run_sync(_mp4_problem, body)
    else:
        problem = incomplete_media(kind, body.tail(), None, body.size)
    if problem is not None:
        return f"the body is incomplete: {problem}"
    if body.framed or kind is not None:
        return None
    if ref.size is not None or ref.sha256:
        return None
    return "the body had no length and ended with a closed connection: not provably complete"


def _mp4_problem(body: _PartBody) -> str | None:
    body.read_all_into_file()
    with body.part.open("rb") as file:

        def read_at(offset: int, count: int) -> bytes:
            return os.pread(file.fileno(), count, offset)

        return incomplete_media("mp4", b"", read_at, body.size, open_ended=body.framed)


def _verify(ref: OutputRef, total: int | None, size: int, digest: str) -> tuple[str | None, bool]:
    """(what is wrong or None, whether the .part may be a prefix worth resuming)."""
    for promised, who in ((total, "the server"), (ref.size, "the provider")):
        if promised is not None and size != promised:
            return f"got {size} bytes, {who} promised {promised}", size < promised
    if size == 0:
        return "empty body", False
    if ref.sha256 and digest != ref.sha256.strip().lower():
        return f"sha256 {digest} does not match the provider's {ref.sha256}", False
    return None, False


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _part_length(part: Path) -> int:
    """The length of a ``.part`` left by an earlier attempt (0: none).

    One ``stat``, in the loop: a metadata call on a local disk takes microseconds,
    where a worker hop costs far more of the loop's time (the directory is made when
    the file is opened, by ``_open_part``)."""
    try:
        return os.stat(part).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _unlink_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    validator_path(part).unlink(missing_ok=True)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _create(path: Path, *, make_dirs: bool) -> int:
    """A descriptor for ``path``, created or truncated; with ``make_dirs``, its
    directory is made when missing (the first output there)."""
    try:
        return os.open(path, _CREATE, 0o666)
    except FileNotFoundError:
        if not make_dirs:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, _CREATE, 0o666)


def _write_durably(path: Path, pieces: list[bytes], *, make_dirs: bool = False) -> None:
    """Create or truncate ``path`` with ``pieces``, fsynced, in four system calls."""
    fd = _create(path, make_dirs=make_dirs)
    try:
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_part(part: Path, start: int, validator: str) -> IO[bytes]:
    """Open for writing at ``start``: append to a resumed prefix, else start afresh
    (its validator first, so that a ``.part`` is only ever resumed against it)."""
    if start == 0:
        fresh = open(_create(part, make_dirs=True), "wb")  # noqa: SIM115 (returned open)
        try:
            validator_path(part).write_text(validator, encoding="utf-8")
        except BaseException:
            fresh.close()
            raise
        return fresh
    file = part.open("r+b")
    file.truncate(start)
    file.seek(start)
    return file


def _open_at(part: Path, start: int, validator: str) -> tuple[_Hasher, IO[bytes], bytes, bytes]:
    """One hop for a ``.part`` that exists: hash the kept prefix (noting its first and
    last bytes), open after it."""
    hasher, head, tail = _hash_prefix(part, start)
    return hasher, _open_part(part, start, validator), head, tail


def _hash_prefix(part: Path, length: int) -> tuple[_Hasher, bytes, bytes]:
    """A sha256 fed with the first ``length`` bytes of ``part`` (the resumed prefix),
    with the prefix's first ``_HEAD`` and last ``TAIL`` bytes."""
    hasher: _Hasher = hashlib.sha256()
    head = tail = b""
    if length == 0:
        return hasher, head, tail
    with part.open("rb") as file:
        remaining = length
        while remaining and (block := file.read(min(_HASH_BLOCK, remaining))):
            hasher.update(block)
            head = head or block[:_HEAD]
            tail = (tail + block[-TAIL:])[-TAIL:]
            remaining -= len(block)
    if remaining:
        raise VerificationError(f"{part} shrank while resuming")
    return hasher, head, tail


def write_sidecar(path: Path, data: Mapping[str, Any]) -> Path:
    """Write the provenance of output ``path`` to ``<path>.json``, atomically.

    Pretty JSON with sorted keys; values JSON cannot hold (paths, dates) are written as
    strings. Keys that name credentials (``api_key``, ``authorization``…) are redacted as
    a last guard for contract 5; callers should not pass them at all.
    """
    text = sidecar_text(data)
    return write_atomic_text(sidecar_path(path), lambda out: out.write(text))


def sidecar_path(path: Path) -> Path:
    """Where the provenance of output ``path`` lives: ``<path>.json``."""
    return path.with_name(path.name + ".json")


def sidecar_text(data: Mapping[str, Any]) -> str:
    """The sidecar's text: see ``write_sidecar``.

    Exactly ``json.dumps(redacted, indent=2, sort_keys=True, ensure_ascii=False,
    default=str)`` (a test compares the two on generated data), written in one pass
    that redacts as it goes: with ``indent`` the json module falls back to its pure
    Python encoder, and that plus a redacting copy costs about twice this one pass for
    every job (benchmarks/RESULTS.md, section "outputs/download.py").
    """
    out: list[str] = []
    _pretty(data, "\n", out)
    out.append("\n")
    return "".join(out)


_encode_string = json.encoder.encode_basestring  # the C one when available


def _pretty(value: Any, newline: str, out: list[str]) -> None:
    """Append ``value`` as indented JSON, in the order of checks the json module uses."""
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None or value is True or value is False:
        out.append(_CONSTANTS[value])
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float_text(value))
    elif isinstance(value, Mapping):
        _pretty_mapping(value, newline, out)
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            out.append(separator)
            separator = "," + inner
            _pretty(item, inner, out)
        out.append(newline + "]")
    else:
        out.append(_encode_string(str(value)))


def _pretty_mapping(value: Mapping[Any, Any], newline: str, out: list[str]) -> None:
    if not value:
        out.append("{}")
        return
    inner = newline + "  "
    separator = "{" + inner
    for key, item in sorted(value.items()):
        out.append(separator)
        separator = "," + inner
        out.append(_encode_string(_key_text(key)))
        if str(key).lower() in _REDACTED_KEYS:
            out.append(': "[redacted]"')
        else:
            out.append(": ")
            _pretty(item, inner, out)
    out.append(newline + "}")


_CONSTANTS = {None: "null", True: "true", False: "false"}


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float_text(key)
    if key is None or key is True or key is False:
        return _CONSTANTS[key]
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def download_retry_verdict(exc: BaseException) -> float | bool:
    """``is_transient`` for ``retry.retrying`` around ``download``.

    False for final errors (and anything that is not a ``DownloadError``), else the
    server's Retry-After seconds when it gave one, else True.
    """
    if not isinstance(exc, DownloadError) or not exc.transient:
        return False
    return exc.retry_after if exc.retry_after is not None else True
