"""Cores of the `web_fetch` and `http` built-in tools, guarded against SSRF.

A model-driven HTTP client must not become a way into the network the worker
runs in (cloud metadata at 169.254.169.254, databases on 10.x, admin ports on
127.0.0.1...). Unless `allow_private` is set:

* only `http` and `https` URLs are accepted;
* `check_url` resolves the host with `loop.getaddrinfo` (which also turns the
  odd literal forms such as `http://2130706433/` or `http://0x7f.1/` into
  addresses) and refuses the URL if ANY address is not a public unicast one:
  private, loopback, link-local, multicast, reserved, unspecified, shared
  (100.64/10) or otherwise not global, for IPv4 and IPv6 alike, looking
  inside IPv4-mapped (`::ffff:a.b.c.d`), 6to4 and NAT64 IPv6 addresses;
* redirects are followed by hand (at most 5) and every hop is checked before
  it is requested;
* the body is read as a stream and cut at `max_bytes` (compressed bodies are
  decompressed here with a bounded output, so a gzip bomb cannot expand past
  the limit), and the whole exchange, redirects included, runs under one
  overall `asyncio.timeout`.

DNS rebinding: closed, not just documented. Requests go through
`_GuardedTransport`, whose network backend resolves the host itself, checks
every address with the same rule, and then connects to the checked IP address
(TLS still verifies the certificate against, and sends SNI for, the hostname).
A name that answered with a public address to `check_url` and a private one
a moment later is therefore refused at connect time. Proxies from the
environment and `.netrc` are ignored (`trust_env=False`): a proxy would make
the address check meaningless.

`allow_hosts` lists hosts ("name", "name:port", "[v6]:port") exempt from the
address check, for an operator who wants one internal service reachable
without opening the whole private network. Hosts match literally (after
lower-casing), not by what they resolve to.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ipaddress
import re
import socket
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, cast

import httpcore
import httpx

from everruns.errors import RetryLater, TransientToolError
from everruns.tools.base import ToolError

MAX_REDIRECTS = 5
USER_AGENT = "everruns/0.1 (web tool)"
_SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SSRFError(ToolError):
    """The URL (or a redirect it led to) points somewhere the tool may not go."""


# --------------------------------------------------------------------------- policy


def _blocked_reason(addr: IPAddress) -> str | None:
    """Why `addr` may not be contacted, or None when it is a public unicast address."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _blocked_reason(embedded)
            if inner is not None:
                return f"{inner} (embedded in {addr})"
    checks = (
        ("an unspecified address", addr.is_unspecified),
        ("a loopback address", addr.is_loopback),
        ("a link-local address", addr.is_link_local),
        ("a multicast address", addr.is_multicast),
        ("a private address", addr.is_private),
        ("a reserved address", addr.is_reserved),
        ("a site-local address", isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local),
        ("an address that is not globally routable", not addr.is_global),
    )
    for label, hit in checks:
        if hit:
            return label
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _parse_ip(text: str) -> IPAddress:
    # getaddrinfo may return scoped IPv6 addresses ("fe80::1%eth0").
    return ipaddress.ip_address(text.split("%", 1)[0])


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class _Policy:
    allow_private: bool = False
    allow_hosts: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)

    @classmethod
    def make(cls, allow_private: bool, allow_hosts: Collection[str] = ()) -> _Policy:
        entries: set[tuple[str, int | None]] = set()
        for entry in allow_hosts:
            try:
                url = httpx.URL(f"http://{entry.strip()}")
            except httpx.InvalidURL as exc:
                raise ValueError(f"invalid allow_hosts entry {entry!r}: {exc}") from None
            entries.add((_host_key(url.raw_host.decode("ascii")), url.port))
        return cls(allow_private, frozenset(entries))

    def exempt(self, host: str, port: int) -> bool:
        if self.allow_private:
            return True
        key = _host_key(host)
        return (key, None) in self.allow_hosts or (key, port) in self.allow_hosts

    async def resolve(self, host: str, port: int) -> list[str]:
        """Addresses of `host`, all of them checked; raises SSRFError if any is refused."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise ToolError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = str(sockaddr[0])
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise ToolError(f"host {host!r} has no IPv4 or IPv6 address")
        if not self.exempt(host, port):
            for text in addresses:
                try:
                    reason = _blocked_reason(_parse_ip(text))
                except ValueError:
                    reason = "unparseable address"
                if reason is not None:
                    shown = host if _host_key(host) == _host_key(text) else f"{host} ({text})"
                    raise SSRFError(
                        f"refused: {shown} is {reason}; this tool may only reach public "
                        "internet addresses (allow_private is off)"
                    )
        return addresses


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    """Parse with httpx itself, so the check sees exactly what the client will request."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ToolError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in _SCHEMES:
        raise SSRFError(
            f"refused: {str(url)!r} uses scheme {parsed.scheme or '(none)'!r}; "
            "only http and https URLs are allowed"
        )
    if not parsed.raw_host:
        raise ToolError(f"invalid URL {str(url)!r}: no host")
    return parsed


async def _check(url: str | httpx.URL, policy: _Policy) -> httpx.URL:
    parsed = _parse_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    await policy.resolve(parsed.raw_host.decode("ascii"), port)
    return parsed


async def check_url(url: str, allow_private: bool, *, allow_hosts: Collection[str] = ()) -> None:
    """Raise SSRFError unless `url` is http(s) and every address of its host is public."""
    await _check(url, _Policy.make(allow_private, allow_hosts))


# --------------------------------------------------------------------------- transport


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the host itself, then connects to a checked IP address."""

    def __init__(self, policy: _Policy):
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise SSRFError("refused: unix sockets are not reachable from this tool")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


@contextlib.contextmanager
def _map_httpcore_errors() -> Iterator[None]:
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        mapped = cast(
            "type[httpx.TransportError]",
            getattr(httpx, type(exc).__name__, httpx.TransportError),
        )
        raise mapped(str(exc)) from exc


class _CoreStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any):
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_httpcore_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections only ever go to checked addresses."""

    def __init__(self, policy: _Policy):
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=10,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=cast("AsyncIterator[bytes]", request.stream),
            extensions=request.extensions,
        )
        with _map_httpcore_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# --------------------------------------------------------------------------- body


class _Decompressor:
    """Content-Encoding decoding with bounded output (no decompression bombs)."""

    def __init__(self, content_encoding: str):
        codings = [
            c.strip().lower()
            for c in content_encoding.split(",")
            if c.strip() and c.strip().lower() != "identity"
        ]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise ToolError(f"unsupported Content-Encoding {content_encoding!r}")
        self._coding = codings[0] if codings else None
        self._z: Any = None

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decoded bytes for `data`, at most `limit` of them (+1, to detect overflow)."""
        if self._coding is None:
            return data[: limit + 1]
        if self._z is None:
            if self._coding == "deflate":
                # "deflate" should be zlib-wrapped, but some servers send raw deflate.
                wrapped = (
                    len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
                )
                self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            else:
                self._z = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            return cast(bytes, self._z.decompress(data, limit + 1))
        except zlib.error as exc:
            raise ToolError(f"cannot decode {self._coding} response body: {exc}") from None


@dataclass
class _Result:
    url: str
    status: int
    headers: httpx.Headers
    content_type: str
    body: bytes
    truncated: bool


async def _read_body(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    decoder = _Decompressor(response.headers.get("content-encoding", ""))
    parts: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        data = decoder.feed(raw, max_bytes - size)
        if size + len(data) > max_bytes:
            parts.append(data[: max_bytes - size])
            return b"".join(parts), True
        parts.append(data)
        size += len(data)
    return b"".join(parts), False


async def _exchange(
    method: str,
    url: str,
    *,
    policy: _Policy,
    timeout: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    content: str | None = None,
    follow_redirects: bool = True,
    inspect: Callable[[httpx.Response], None] | None = None,
) -> _Result:
    """One request plus its redirects, every hop checked, under one overall timeout."""
    if max_bytes < 0:
        raise ToolError("max_bytes must not be negative")
    try:
        async with asyncio.timeout(timeout):
            parsed = await _check(url, policy)
            async with httpx.AsyncClient(
                transport=_GuardedTransport(policy),
                trust_env=False,
                timeout=httpx.Timeout(timeout),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
            ) as client:
                kwargs: dict[str, Any] = {"headers": headers}
                if json_body is not None:
                    kwargs["json"] = json_body
                elif content is not None:
                    kwargs["content"] = content.encode("utf-8")
                request = client.build_request(method, parsed, **kwargs)
                hops = 0
                while True:
                    response = await client.send(request, stream=True, follow_redirects=False)
                    try:
                        next_request = response.next_request if follow_redirects else None
                        if next_request is not None:
                            hops += 1
                            if hops > MAX_REDIRECTS:
                                raise ToolError(
                                    f"too many redirects (more than {MAX_REDIRECTS}) "
                                    f"starting at {url}"
                                )
                            await _check(next_request.url, policy)
                            request = next_request
                            continue
                        if inspect is not None:
                            inspect(response)
                        if method.upper() == "HEAD":
                            body, truncated = b"", False
                        else:
                            body, truncated = await _read_body(response, max_bytes)
                        return _Result(
                            url=str(response.url),
                            status=response.status_code,
                            headers=response.headers,
                            content_type=response.headers.get("content-type", ""),
                            body=body,
                            truncated=truncated,
                        )
                    finally:
                        await response.aclose()
    except TimeoutError:
        raise TransientToolError(f"timed out after {timeout:g}s: {method} {url}") from None
    except httpx.TransportError as exc:
        raise TransientToolError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ToolError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- text

_TEXT_TYPES = {
    "application/json",
    "application/ld+json",
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-javascript",
    "application/x-ndjson",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/sql",
    "application/graphql",
    "application/x-sh",
    "application/x-www-form-urlencoded",
}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}


def _mime(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_textual(mime: str) -> bool:
    return (
        mime.startswith("text/")
        or mime in _TEXT_TYPES
        or mime.endswith("+json")
        or mime.endswith("+xml")
    )


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:4096]


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _decode(data: bytes, content_type: str, *, html: bool, partial: bool) -> str:
    charset = None
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9_.:-]+)", content_type, re.I)
    if match:
        charset = match.group(1)
    elif html:
        meta = _META_CHARSET.search(data[:4096])
        if meta:
            charset = meta.group(1).decode("ascii")
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # A cut body may end inside a multi-byte character: drop that tail quietly.
    return str(decoder.decode(data, final=not partial))


_SKIP_TAGS = {"script", "style", "noscript", "svg", "template", "iframe", "object", "math"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCK_TAGS = {
    *_HEADINGS,
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "caption",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "head",
    "header",
    "hgroup",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "option",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
}


class _TextExtractor(HTMLParser):
    """HTML to readable text: one line per block, '# ' headings, '- ' list items."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._buf: list[str] = []
        self._prefix = ""
        self._skip = 0
        self._pre = 0
        self._in_title = False
        self._title: list[str] = []

    @property
    def title(self) -> str | None:
        title = " ".join("".join(self._title).split())
        return title or None

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines).strip("\n")

    def _flush(self) -> bool:
        raw = "".join(self._buf)
        self._buf = []
        if self._pre:
            lines = [line.rstrip() for line in raw.split("\n")]
            while lines and not lines[0]:
                lines.pop(0)
            while lines and not lines[-1]:
                lines.pop()
            text = "\n".join(lines)
        else:
            text = " ".join(raw.split())
        if not text:
            return False
        if self._prefix.startswith("#") and self.lines:
            self.lines.append("")
        self.lines.append(self._prefix + text)
        self._prefix = ""
        return True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag in _HEADINGS:
            self._prefix = "#" * _HEADINGS[tag] + " "
        elif tag == "li":
            self._prefix = "- "
        elif tag == "pre":
            self._pre += 1
        elif tag in ("td", "th"):
            self._buf.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self._buf.append(f" [{alt.strip()}] ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag in _HEADINGS or tag == "li":
            self._prefix = ""
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag in ("td", "th"):
            self._buf.append(" ")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self._title.append(data)
        else:
            self._buf.append(data)


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, readable text) of an HTML document."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.title, parser.text()


def _truncation_marker(max_bytes: int) -> str:
    return f"\n[... truncated: the response is larger than {max_bytes} bytes]"


# --------------------------------------------------------------------------- tools


async def fetch_text(
    url: str,
    *,
    allow_private: bool = False,
    timeout: float = 20,
    max_bytes: int = 2_000_000,
    allow_hosts: Collection[str] = (),
    trace: dict[str, str] | None = None,
) -> dict[str, Any]:
    """GET `url` and return its readable text (HTML converted, other text as is).

    `trace`: W3C trace context headers of the calling tool's span, sent along.

    Returns {"url": final URL, "status", "content_type", "title", "text"}; a body
    larger than `max_bytes` is cut there and the text ends with a truncation note.
    """

    def refuse_binary(response: httpx.Response) -> None:
        mime = _mime(response.headers.get("content-type", ""))
        if mime and not _is_textual(mime) and mime not in _HTML_TYPES:
            raise ToolError(
                f"{response.url} returned binary content ({mime}); "
                "web_fetch only reads HTML and text"
            )

    result = await _exchange(
        "GET",
        url,
        policy=_Policy.make(allow_private, allow_hosts),
        timeout=timeout,
        max_bytes=max_bytes,
        headers={
            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
            **(trace or {}),
        },
        inspect=refuse_binary,
    )
    mime = _mime(result.content_type)
    if not mime and _looks_binary(result.body):
        raise ToolError(f"{result.url} returned binary content (no content type)")
    head = result.body[:512].lstrip().lower()
    is_html = mime in _HTML_TYPES or (
        not mime and (head.startswith(b"<!doctype html") or head.startswith(b"<html"))
    )
    decoded = _decode(result.body, result.content_type, html=is_html, partial=result.truncated)
    title: str | None = None
    if is_html:
        title, text = html_to_text(decoded)
    else:
        text = decoded
    if result.truncated:
        text += _truncation_marker(max_bytes)
    return {
        "url": result.url,
        "status": result.status,
        "content_type": result.content_type,
        "title": title,
        "text": text,
    }


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_SELECTED_HEADERS = (
    "content-type",
    "content-length",
    "content-language",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "retry-after",
    "date",
    "link",
    "allow",
    "www-authenticate",
)


def _selected_headers(headers: httpx.Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _SELECTED_HEADERS:
        if name in headers:
            out[name] = ", ".join(headers.get_list(name))
    for name, value in headers.multi_items():
        lower = name.lower()
        if lower.startswith(("x-ratelimit-", "ratelimit", "x-request-id")) and lower not in out:
            out[lower] = value
    return out


async def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    body: str | None = None,
    allow_private: bool = False,
    timeout: float = 20,
    max_bytes: int = 2_000_000,
    follow_redirects: bool = True,
    allow_hosts: Collection[str] = (),
    retry_5xx: bool = False,
) -> dict[str, Any]:
    """Send one HTTP request; return {"url", "status", "headers", "body", "truncated"}.

    A 429 or 503 raises `RetryLater` (the server did not process it); another 5xx raises
    `TransientToolError` when `retry_5xx` (a tool that may repeat), else is returned.

    `headers` of the response are a selection (content type, caching, location,
    rate limits...). `body` is the response text, cut at `max_bytes` with a note;
    a binary body is described rather than returned.
    """
    verb = method.strip().upper()
    if verb not in HTTP_METHODS:
        raise ToolError(f"unsupported method {method!r}; use one of {', '.join(HTTP_METHODS)}")
    if json_body is not None and body is not None:
        raise ToolError("give either json_body or body, not both")
    result = await _exchange(
        verb,
        url,
        policy=_Policy.make(allow_private, allow_hosts),
        timeout=timeout,
        max_bytes=max_bytes,
        headers=headers,
        json_body=json_body,
        content=body,
        follow_redirects=follow_redirects,
    )
    _raise_retryable(verb, result, retry_5xx)
    mime = _mime(result.content_type)
    binary = (mime and not _is_textual(mime) and mime not in _HTML_TYPES) or (
        not mime and _looks_binary(result.body)
    )
    if binary:
        size = f"{len(result.body)}{'+' if result.truncated else ''}"
        text = f"[binary content: {mime or 'unknown type'}, {size} bytes not shown]"
    else:
        text = _decode(result.body, result.content_type, html=False, partial=result.truncated)
        if result.truncated:
            text += _truncation_marker(max_bytes)
    return {
        "url": result.url,
        "status": result.status,
        "headers": _selected_headers(result.headers),
        "body": text,
        "truncated": result.truncated,
    }


def _raise_retryable(method: str, result: _Result, retry_5xx: bool) -> None:
    """429 and 503 say the request was not processed: retry after the server's
    `Retry-After` (any effect). Another 5xx may have acted: a transient failure,
    retried only for tools that are not `at_most_once` (`retry_5xx`)."""
    from everruns.providers.errors import retry_after_from_headers

    status = result.status
    if status in (429, 503):
        after = retry_after_from_headers(dict(result.headers), rate_limited=status == 429)
        raise RetryLater(after=after, reason=f"HTTP {status} from {method} {result.url}")
    if status >= 500 and retry_5xx:
        snippet = result.body[:300].decode("utf-8", "replace")
        raise TransientToolError(f"HTTP {status} from {method} {result.url}: {snippet}")
