"""HTTP clients and the boundary where transport errors become ours.

Code everywhere uses httpx's API and receives real ``httpx.Response`` objects. What runs
underneath is chosen here, once: by default aiohttp (several times less CPU per request
than httpx's own transport on this workload; benchmarks/RESULTS.md, section
"http/client.py"), with ``PIPELINE_HTTP_BACKEND=httpx`` to fall back to httpx's native transport.

Two kinds of client, never mixed (contract 5):
- an *API client* per provider, carrying that provider's credentials, with event hooks
  that take a rate-limit token before every request and feed every response's rate
  headers back to the limiter;
- one *download client* with no credentials at all, for result URLs on other hosts.

Both are ``LeanClient``s over ``AiohttpTransport``: the same httpx API and objects, with
less of the work httpx and httpx-aiohttp add on top of aiohttp for the simple requests
made here: no cookie jar, auth or redirect layers, one URL parse and one header copy
per request, a body read in one piece (measurements: benchmarks/RESULTS.md, section
"http/client.py").
"""

from __future__ import annotations

import datetime
import json as jsonlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, TypeVar

import httpx

from pipeline.errors import ResponseTooLarge, SubmitRefused, SubmitUnknown, TransientError
from pipeline.http.transport import READ_AT_ONCE, AiohttpTransport, PlainBody
from pipeline.models import DEFAULT_MAX_RESPONSE_BYTES

__all__ = [
    "READ_AT_ONCE",
    "AiohttpTransport",
    "LeanClient",
    "RequestHook",
    "ResponseHook",
    "make_api_client",
    "make_download_client",
    "request_was_unsent",
    "send",
]

RequestHook = Callable[[httpx.Request], Awaitable[None]]
ResponseHook = Callable[[httpx.Response], Awaitable[None]]

USER_AGENT = "pipeline/0.1 (+https://github.com/pipeline)"

_URL_CACHE_SIZE = 1024  # merged URLs remembered per client (then forgotten all at once)
_TEMPLATE_CACHE_SIZE = 64  # hosts whose header template a client remembers
_K = TypeVar("_K")
_V = TypeVar("_V")
_encode_json = jsonlib.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_logger = logging.getLogger("httpx")  # where httpx logs each request


def _backend() -> str:
    return os.environ.get("PIPELINE_HTTP_BACKEND", "aiohttp")


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if _backend() == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits)
    return AiohttpTransport(limits)


def _remember(cache: dict[_K, _V], limit: int, key: _K, value: _V) -> _V:
    """Store ``value`` in a cache that forgets everything at once when full: cheaper
    than an LRU on every hit, and enough for keys that repeat in bursts (a client's
    submit and status URLs, its few hosts)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def _merge_headers(merged: httpx.Headers, headers: Any) -> None:
    """``merged.update(headers)``; for a dict of ASCII strings, as it always is here, by
    setting each, several times cheaper than ``update`` (benchmarks/RESULTS.md, section
    "http/client.py")."""
    if type(headers) is dict and all(
        type(k) is str and type(v) is str and k.isascii() and v.isascii()
        for k, v in headers.items()
    ):
        for name, value in headers.items():
            merged[name] = value
    else:
        merged.update(headers)


class LeanClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` with a short path for the requests this project makes.

    ``build_request`` and ``send`` are overridden; everything built on them (``request``,
    ``stream``, ``get``…) takes the short path. ``build_request`` takes it for a URL
    given as a string, absolute or a path under ``base_url``, with any of ``json``,
    ``params``, ``headers``, ``timeout``, ``extensions``: the merged URL is parsed once
    and remembered, the headers are copied from a template that already holds ``Host``,
    and JSON is encoded as httpx encodes it. The result equals httpx's own request
    (tests compare them). ``send`` takes it whenever no ``auth`` is involved and no
    ``mounts`` are set: it runs the event hooks around every request, follows redirects
    when asked (the download client), applies the timeout extension, and hands over a
    body the transport already read without passing it through httpx's decoder
    layers (when it has no Content-Encoding). Anything else goes to httpx's code.

    One deliberate difference: the client keeps no cookies from responses (its jar
    refuses them). No API we call relies on cookies, the cookie jar costs time on every
    response even when it is empty, and a download client must carry nothing a host
    gave it (contract 5). Cookies set on the client explicitly are still sent (via
    httpx's path).

    ``max_response_bytes`` bounds what ``send`` reads of an answer's (decoded) body.
    """

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cookies", CookieJar(DefaultCookiePolicy(allowed_domains=[])))
        # What the short path needs of the client, kept here rather than read from
        # httpx's private attributes: the transport given (none: httpx's path always;
        # with one given, httpx makes no proxy mounts from the environment), the mounts
        # (any: httpx's path) and the default encoding.
        self._lean_transport: httpx.AsyncBaseTransport | None = kwargs.get("transport")
        self._lean_mounts = bool(kwargs.get("mounts"))
        self._lean_encoding = kwargs.get("default_encoding", "utf-8")
        super().__init__(**kwargs)
        self._urls: dict[str, httpx.URL] = {}
        self._urls_with_params: dict[tuple[str, str | None], httpx.URL] = {}
        self._urls_base: httpx.URL | None = None  # the base_url the cached URLs are under
        self._prefix: str | None = None  # str(base_url), when paths may be appended to it
        self._templates: dict[bytes, tuple[list[tuple[bytes, bytes]], httpx.Headers]] = {}

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx.Request:
        target = None
        if (
            content is None
            and data is None
            and files is None
            and cookies is None
            and isinstance(url, str)
            and not self.cookies
            and not self.params
        ):
            target = self._merged_url(url)
        if target is None:
            return super().build_request(
                method, url, content=content, data=data, files=files, json=json,
                params=params, headers=headers, cookies=cookies, timeout=timeout,
                extensions=extensions,
            )  # fmt: skip
        if params is not None:
            target = self._with_params(target, params)
        merged = httpx.Headers(self._template(target))
        if headers:
            _merge_headers(merged, headers)
        method = method.upper()
        body = b""
        if json is not None:
            body = _encode_json.encode(json).encode("utf-8")
            if "Content-Length" not in merged:  # cheaper than setdefault
                merged["Content-Length"] = str(len(body))
            if "Content-Type" not in merged:
                merged["Content-Type"] = "application/json"
        elif method in _BODY_METHODS and not (
            "Content-Length" in merged or "Transfer-Encoding" in merged
        ):
            merged["Content-Length"] = "0"
        extensions = {} if extensions is None else extensions
        if "timeout" not in extensions:
            chosen = self.timeout if timeout is httpx.USE_CLIENT_DEFAULT else httpx.Timeout(timeout)
            extensions = {**extensions, "timeout": chosen.as_dict()}
        request = httpx.Request(
            method, target, headers=merged, stream=httpx.ByteStream(body), extensions=extensions
        )
        request.read()  # ``request.content``, as httpx sets it for a body of bytes
        return request

    def _merged_url(self, url: str) -> httpx.URL | None:
        """``url`` merged with ``base_url`` as httpx merges it, or None when unsure.

        A path (``/v1/x``) is appended to ``base_url``; an ``http(s)://`` URL stands
        alone. Anything else (``//host``, fragments, relative paths, a ``base_url``
        with a query) is left to httpx. Parsing is a good part of building a request,
        so URLs under ``base_url`` are remembered: a submit URL never changes, a status URL repeats
        at every poll. Absolute URLs (result files, each fetched once) are not.
        """
        if self.base_url is not self._urls_base:
            base = self._urls_base = self.base_url
            plain = base.is_absolute_url and not base.query and not base.fragment
            text = str(base)  # no "/" after the host when base_url has no path
            self._prefix = (text if text.endswith("/") else text + "/") if plain else None
            self._urls.clear()
            self._urls_with_params.clear()
        if "#" in url:
            return None
        if url.startswith("/") and not url.startswith("//"):
            if self._prefix is None:
                return None
            full = self._prefix + url[1:]
        elif url.startswith(("http://", "https://")):
            return self._parse(url)
        else:
            return None
        known = self._urls.get(full)
        if known is None:
            known = _remember(self._urls, _URL_CACHE_SIZE, full, self._parse(full))
        return known

    def _parse(self, url: str) -> httpx.URL:
        """``httpx.URL(url)``: a status URL is parsed once per task, then remembered; a
        result URL once per download."""
        return httpx.URL(url)

    def _with_params(self, url: httpx.URL, params: Any) -> httpx.URL:
        """``httpx.URL(url, params=params)``, as ``httpx.Request`` makes it, remembered:
        the URL and the encoded query (far cheaper to make than the URL) decide the
        result, and a status URL with the task in its query repeats at every poll."""
        key = (str(url), str(httpx.QueryParams(params)) if params else None)
        known = self._urls_with_params.get(key)
        if known is None:
            known = httpx.URL(url, params=params)
            _remember(self._urls_with_params, _URL_CACHE_SIZE, key, known)
        return known

    def _template(self, url: httpx.URL) -> httpx.Headers:
        """``Host`` first, then the client's headers, as httpx orders them: built once
        per host, and again whenever the client's headers change."""
        netloc = url.netloc
        current = self.headers.raw
        known = self._templates.get(netloc)
        if known is None or known[0] != current:
            known = (current, httpx.Headers([(b"Host", netloc), *current]))
            _remember(self._templates, _TEMPLATE_CACHE_SIZE, netloc, known)
        return known[1]

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if (
            (auth is None or (auth is httpx.USE_CLIENT_DEFAULT and self.auth is None))
            and self._lean_transport is not None
            and not self._lean_mounts
            and not request.url.userinfo  # httpx turns these into basic auth
        ):
            if follow_redirects is httpx.USE_CLIENT_DEFAULT:
                follow_redirects = self.follow_redirects
            return await self._send_lean(request, stream=stream, follow_redirects=follow_redirects)
        return await super().send(
            request, stream=stream, auth=auth, follow_redirects=follow_redirects
        )

    async def _send_lean(
        self, request: httpx.Request, *, stream: bool, follow_redirects: bool
    ) -> httpx.Response:
        """What ``AsyncClient.send`` does for a request without auth, in one loop: the
        request hooks before every request and the response hooks after every response
        (redirects included), as the rate limiter needs them."""
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if "timeout" not in request.extensions:  # as httpx 0.28 sets it (0.27 did not)
            request.extensions = {**request.extensions, "timeout": self.timeout.as_dict()}
        history: list[httpx.Response] = []
        while True:
            if len(history) > self.max_redirects:
                raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=request)
            for hook in self.event_hooks["request"]:
                await hook(request)
            start = time.perf_counter()
            response = await self._send_single(request)
            try:
                for hook in self.event_hooks["response"]:
                    await hook(response)
                if history:
                    response.history = list(history)
                if not response.has_redirect_location:
                    await _deliver(response, start, stream=stream)
                    return response
                next_request = self._redirect_request(request, response)
                if not follow_redirects:
                    response.next_request = next_request
                    await _deliver(response, start, stream=stream)
                    return response
                _bind(response, start)
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
            history = [*history, response]
            request = next_request

    def _redirect_request(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        """The request that follows a redirect, made as httpx makes it (method, URL,
        headers, body), from public parts only."""
        method = request.method
        status = response.status_code
        if (status in (303, 302) and method != "HEAD") or (status == 301 and method == "POST"):
            method = "GET"
        try:
            url = httpx.URL(response.headers["Location"])
        except httpx.InvalidURL as exc:
            message = f"Invalid URL in location header: {exc}."
            raise httpx.RemoteProtocolError(message, request=request) from None
        if url.scheme and not url.host:
            url = url.copy_with(host=request.url.host)
        if url.is_relative_url:
            url = request.url.join(url)
        if request.url.fragment and not url.fragment:
            url = url.copy_with(fragment=request.url.fragment)
        headers = httpx.Headers(request.headers)
        if _origin(url) != _origin(request.url):
            was = request.url
            if not (was.scheme == "http" and _port(was) == 80 and url.scheme == "https"
                    and _port(url) == 443 and was.host == url.host):  # fmt: skip
                headers.pop("Authorization", None)
            headers["Host"] = url.netloc.decode("ascii")
        stream: Any = request.stream
        if method != request.method and method == "GET":
            headers.pop("Content-Length", None)
            headers.pop("Transfer-Encoding", None)
            stream = None
        headers.pop("Cookie", None)
        return httpx.Request(
            method, url, headers=headers, cookies=httpx.Cookies(self.cookies), stream=stream,
            extensions=request.extensions,
        )  # fmt: skip

    async def _send_single(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):  # httpx's own check
            message = "Attempted to send an sync request with an AsyncClient instance."
            raise RuntimeError(message)  # noqa: TRY004 (the error httpx raises)
        try:
            assert self._lean_transport is not None
            response = await self._lean_transport.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as httpx's request_context does
            raise
        response.request = request
        response.default_encoding = self._lean_encoding
        if _logger.isEnabledFor(logging.INFO):
            _logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response


def _port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, _port(url))


async def _deliver(response: httpx.Response, start: float, *, stream: bool) -> None:
    """Leave the response as ``AsyncClient.send`` does: read unless ``stream``, and
    set ``elapsed`` when read (a body the transport already read is read here without
    awaiting) or, when streamed, when closed."""
    if not stream and type(response.stream) is PlainBody:
        response.read()  # the body is in memory: no await, no async generators
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - start)
        return
    _bind(response, start)
    if not stream:
        await response.aread()


class _Timed(httpx.AsyncByteStream):
    """A response's stream that sets its ``elapsed`` when closed, as httpx's does."""

    def __init__(self, stream: httpx.AsyncByteStream, response: httpx.Response, start: float):
        self._stream = stream
        self._response = response
        self._start = start

    def __aiter__(self) -> Any:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        self._response.elapsed = datetime.timedelta(seconds=time.perf_counter() - self._start)
        await self._stream.aclose()


def _bind(response: httpx.Response, start: float) -> None:
    """Wrap the stream so that closing the response sets ``elapsed``."""
    assert isinstance(response.stream, httpx.AsyncByteStream)
    response.stream = _Timed(response.stream, response, start)


def make_api_client(
    base_url: str,
    *,
    headers: Mapping[str, str],
    timeout: float,
    max_connections: int,
    on_request: RequestHook | None = None,
    on_response: ResponseHook | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> LeanClient:
    """A client for one provider's API: its base URL, its credentials, its limiter, and
    the most bytes ``send`` reads of one answer."""
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [], "response": []}
    if on_request is not None:
        hooks["request"].append(on_request)
    if on_response is not None:
        hooks["response"].append(on_response)
    client = LeanClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, **headers},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        transport=_transport(max_connections),
        event_hooks=hooks,
        follow_redirects=False,
    )
    client.max_response_bytes = max_response_bytes
    return client


def make_download_client(*, timeout: float, max_connections: int) -> LeanClient:
    """A client for result URLs. It carries no credentials whatsoever (contract 5)."""
    return LeanClient(
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        transport=_transport(max_connections),
        follow_redirects=True,
    )


def request_was_unsent(exc: BaseException) -> bool:
    """True only when the request provably never reached the server.

    A refused or failed connection means nothing was sent. Anything else (a read
    timeout, a dropped connection after sending) leaves the outcome unknown. The aiohttp
    transport maps every ``ClientConnectionError`` — including a server that hung up
    after reading the request — to ``httpx.ConnectTimeout``, so the original aiohttp
    exception is inspected rather than trusting the mapped httpx type.
    """
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        return isinstance(cause, aiohttp.ClientConnectorError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    submit: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, reading the whole body; transport trouble becomes our errors.

    With ``submit=True`` a failure after the request may have left raises
    ``SubmitUnknown`` (contract 2), one that provably never left ``SubmitRefused``;
    otherwise transport trouble is a ``TransientError``. A body past the client's
    ``max_response_bytes`` is abandoned as it streams: ``ResponseTooLarge``
    (transient), or ``SubmitUnknown`` for a submit.
    """
    cap = getattr(client, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
    try:
        request = client.build_request(method, url, **kwargs)
        response = await client.send(request, stream=True)
        try:
            return await _read_capped(response, cap, f"{method} {url}")
        finally:
            await response.aclose()
    except httpx.RequestError as exc:
        what = f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": ")
        if not submit:
            raise TransientError(f"request failed ({what})") from exc
        if request_was_unsent(exc):
            raise SubmitRefused(f"submit not sent ({what})") from exc
        raise SubmitUnknown(f"no answer to submit ({what})") from exc
    except ResponseTooLarge as exc:
        if submit:
            raise SubmitUnknown(f"unreadable answer to submit: {exc}") from exc
        raise


_REBUILT_DROPS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


async def _read_capped(response: httpx.Response, cap: int, what: str) -> httpx.Response:
    """``response`` with its body read, never holding more than ``cap`` decoded bytes.

    A body the transport already read (small, announced) is taken as it is; any other
    is read piece by piece and handed back in a new response with the decoded body
    (its framing and encoding headers dropped)."""

    def too_large() -> ResponseTooLarge:  # made only when raised: errors scrub their text
        return ResponseTooLarge(
            f"answer to {what} is larger than the cap of {cap} bytes "
            "(providers.<name>.limits.max_response_bytes)",
            status=response.status_code,
        )

    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > cap:
        raise too_large()
    framed = announced.isdigit() and "content-encoding" not in response.headers
    if framed or type(response.stream) is PlainBody or response.is_stream_consumed:
        await response.aread()  # at most the announced length, or read by the transport
        if len(response.content) > cap:
            raise too_large()
        return response
    pieces: list[bytes] = []
    size = 0
    async for piece in response.aiter_bytes():
        size += len(piece)
        if size > cap:
            raise too_large()
        pieces.append(piece)
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _REBUILT_DROPS]
    rebuilt = httpx.Response(
        response.status_code,
        headers=headers,
        content=b"".join(pieces),
        request=response.request,
        extensions=response.extensions,
    )
    rebuilt.history = response.history
    return rebuilt
