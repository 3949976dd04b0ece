"""web_fetch / http tool cores against a real HTTP server on 127.0.0.1.

Every socket connection the process makes during these tests is recorded with
an audit hook, and a test fails if any goes to an address other than 127.0.0.1
or ::1: the SSRF guard must refuse private targets before connecting to them.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from everruns.tools.base import ToolError
from everruns.tools.web import (
    SSRFError,
    _blocked_reason,
    _GuardedBackend,
    _parse_ip,
    _Policy,
    check_url,
    fetch_text,
    html_to_text,
    http_request,
)

# ----------------------------------------------------------------- connection audit

_connects: list[Any] = []
_recording = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event == "socket.connect":
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def only_loopback_traffic() -> Iterator[list[Any]]:
    global _recording
    _connects.clear()
    _recording = True
    try:
        yield _connects
    finally:
        _recording = False
    strays = [a for a in _connects if not (isinstance(a, tuple) and a[0] in ("127.0.0.1", "::1"))]
    assert not strays, f"connections attempted to non-loopback addresses: {strays}"


# ----------------------------------------------------------------- test server

PAGE = b"""<!DOCTYPE html>
<html><head><title>  Test   Page </title>
<style>body { color: red }</style>
<script>var secret = "SCRIPT-CONTENT"; document.write("<p>no</p>");</script>
</head>
<body>
<noscript>NOSCRIPT-CONTENT</noscript>
<svg><text>SVG-CONTENT</text></svg>
<h1>Main   heading</h1>
<p>First paragraph with a <a href="/x">link text</a> and &amp; entity.</p>
<ul><li>one</li><li><p>two</p></li></ul>
<h2>Sub</h2>
<div>Block
   with    spaces</div>
<pre>line 1
  indented</pre>
</body></html>"""

LARGE = b"abcdefghij" * 500_000  # 5 MB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/html":
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif path == "/latin1":
            self._send(200, "<p>café</p>".encode("latin-1"), "text/html; charset=iso-8859-1")
        elif path == "/json":
            self._send(200, json.dumps({"hello": "world", "n": 1}).encode(), "application/json")
        elif path == "/text":
            self._send(200, b"plain <b>text</b> as is\n", "text/plain")
        elif path == "/binary":
            self._send(200, b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png")
        elif path == "/large":
            self._send(200, LARGE, "text/plain")
        elif path == "/gzip-bomb":
            payload = gzip.compress(b"a" * 20_000_000)
            self._send(200, payload, "text/plain", Content_Encoding="gzip")
        elif path == "/slow":
            time.sleep(float(query.get("s", "3")))
            self._send(200, b"late", "text/plain")
        elif path == "/drip":
            # Headers at once, then a byte every 0.1 s: no single read ever times out.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/redirect":
            self.send_response(int(query.get("code", "302")))
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/echo":
            echoed = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            self._send(
                int(query.get("status", "200")),
                json.dumps(echoed).encode(),
                "application/json",
                ETag='"v1"',
                X_RateLimit_Remaining="41",
                Set_Cookie="session=abc",
            )
        else:
            self._send(404, b"not found", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


# ----------------------------------------------------------------- address rules


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert _blocked_reason(_parse_ip(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert _blocked_reason(_parse_ip(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a00:1]/",  # 10.0.0.1, IPv4-mapped in hex
        "http://localhost/",
        "http://LocalHost:8080/",
        "http://2130706433/",  # 127.0.0.1 as a decimal number
        "http://0x7f.1/",  # 127.0.0.1, hex and short form
        "http://0.0.0.0:8080/",
        "https://169.254.169.254/",
    ],
)
async def test_check_url_refuses_private_targets(url: str) -> None:
    with pytest.raises(SSRFError, match="refused"):
        await check_url(url, False)


async def test_refusal_messages_say_why() -> None:
    with pytest.raises(SSRFError, match=r"169\.254\.169\.254 is a link-local address"):
        await check_url("http://169.254.169.254/latest/meta-data/", False)
    with pytest.raises(SSRFError, match=r"localhost \(127\.0\.0\.1\) is a loopback address"):
        await check_url("http://localhost:8000/", False)
    with pytest.raises(SSRFError, match="not globally routable"):
        await check_url("http://100.64.0.1/", False)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "gopher://x/"])
async def test_check_url_refuses_other_schemes(url: str) -> None:
    with pytest.raises(SSRFError, match="only http and https"):
        await check_url(url, True)


async def test_check_url_invalid_forms() -> None:
    with pytest.raises(ToolError):  # httpx refuses the octal form outright
        await check_url("http://0177.0.0.1/", False)
    with pytest.raises(ToolError, match="no host"):
        await check_url("http:///path", False)


async def test_check_url_allows_private_when_asked() -> None:
    await check_url("http://127.0.0.1/", True)
    await check_url("http://10.0.0.1/", True)  # only checked; nothing is sent
    await check_url("http://127.0.0.1:8080/", False, allow_hosts=["127.0.0.1:8080"])
    with pytest.raises(SSRFError):
        await check_url("http://127.0.0.1:8081/", False, allow_hosts=["127.0.0.1:8080"])


async def test_connect_time_check_closes_rebinding_window(server: str) -> None:
    """The transport resolves and checks again itself, and connects to the checked IP."""
    backend = _GuardedBackend(_Policy.make(False))
    with pytest.raises(SSRFError, match="loopback"):
        await backend.connect_tcp("localhost", _port(server))
    allowed = _GuardedBackend(_Policy.make(True))
    stream = await allowed.connect_tcp("localhost", _port(server))
    await stream.aclose()


# ----------------------------------------------------------------- fetch_text / SSRF


@pytest.mark.parametrize(
    "url",
    [
        "{server}/html",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/html",
        "http://localhost:{port}/html",
        "http://2130706433:{port}/html",
    ],
)
async def test_fetch_refuses_private_targets(
    server: str, url: str, only_loopback_traffic: list[Any]
) -> None:
    target = url.format(server=server, port=_port(server))
    with pytest.raises(SSRFError):
        await fetch_text(target)
    with pytest.raises(SSRFError):
        await http_request("GET", target)
    assert only_loopback_traffic == []  # refused before any connection


@pytest.mark.parametrize(
    "to",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:{port}/html",
        "http://[::1]:{port}/html",
        "file:///etc/passwd",
    ],
)
async def test_redirect_to_private_address_is_refused(
    server: str, to: str, only_loopback_traffic: list[Any]
) -> None:
    # The test server itself is loopback: allow exactly its host:port, nothing else.
    allow = [f"127.0.0.1:{_port(server)}"]
    target = to.format(port=_port(server))
    with pytest.raises(SSRFError):
        await fetch_text(f"{server}/redirect?to={target}", allow_hosts=allow)
    with pytest.raises(SSRFError):
        await http_request(
            "POST", f"{server}/redirect?code=307&to={target}", body="x", allow_hosts=allow
        )
    # One connection: to the test server for the first hop; none for the redirect.
    assert only_loopback_traffic == [("127.0.0.1", _port(server))] * 2


async def test_fetch_allowed_with_allow_private(server: str) -> None:
    result = await fetch_text(f"{server}/html", allow_private=True)
    assert result["status"] == 200
    assert result["url"] == f"{server}/html"
    result = await fetch_text(f"http://localhost:{_port(server)}/text", allow_private=True)
    assert result["text"] == "plain <b>text</b> as is\n"


async def test_redirects_followed_within_the_allowed_hosts(server: str) -> None:
    allow = [f"127.0.0.1:{_port(server)}"]
    result = await fetch_text(f"{server}/redirect?to=/redirect%3Fto%3D/json", allow_hosts=allow)
    assert result["url"] == f"{server}/json"
    assert json.loads(result["text"]) == {"hello": "world", "n": 1}
    with pytest.raises(ToolError, match="too many redirects"):
        await fetch_text(f"{server}/loop", allow_private=True)


async def test_html_becomes_readable_text(server: str) -> None:
    result = await fetch_text(f"{server}/html", allow_private=True)
    assert result["title"] == "Test Page"
    assert result["content_type"].startswith("text/html")
    text = result["text"]
    for hidden in ("SCRIPT-CONTENT", "NOSCRIPT-CONTENT", "SVG-CONTENT", "color: red", "<", ">"):
        assert hidden not in text
    assert text.splitlines() == [
        "# Main heading",
        "First paragraph with a link text and & entity.",
        "- one",
        "- two",
        "",
        "## Sub",
        "Block with spaces",
        "line 1",
        "  indented",
    ]


def test_html_to_text_edge_cases() -> None:
    title, text = html_to_text(
        "<p>a<br>b</p><table><tr><td>x</td><td>y</td></tr></table><img alt='pic'>"
        "<p>&nbsp;</p><svg/><p>after self-closing svg</p>"
    )
    assert title is None
    assert text.splitlines() == ["a", "b", "x y", "[pic]", "after self-closing svg"]


async def test_charset_and_non_html(server: str) -> None:
    latin = await fetch_text(f"{server}/latin1", allow_private=True)
    assert latin["text"] == "café"
    data = await fetch_text(f"{server}/json", allow_private=True)
    assert data["title"] is None
    assert json.loads(data["text"]) == {"hello": "world", "n": 1}


async def test_binary_content_is_refused(server: str) -> None:
    with pytest.raises(ToolError, match="image/png"):
        await fetch_text(f"{server}/binary", allow_private=True)
    result = await http_request("GET", f"{server}/binary", allow_private=True)
    assert result["body"].startswith("[binary content: image/png")


async def test_size_limit(server: str) -> None:
    result = await fetch_text(f"{server}/large", allow_private=True, max_bytes=100_000)
    body, _, marker = result["text"].partition("\n[... truncated")
    assert len(body) == 100_000 and body == LARGE[:100_000].decode()
    assert "larger than 100000 bytes" in marker
    response = await http_request("GET", f"{server}/large", allow_private=True, max_bytes=1000)
    assert response["truncated"] is True
    assert response["body"].startswith("abcdefghij" * 100 + "\n[... truncated")


async def test_gzip_bomb_is_cut_at_the_limit(server: str) -> None:
    result = await http_request("GET", f"{server}/gzip-bomb", allow_private=True, max_bytes=50_000)
    assert result["truncated"] is True
    assert result["body"].startswith("a" * 50_000 + "\n[... truncated")


async def test_timeout_while_waiting(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"timed out after 0\.5s"):
        await fetch_text(f"{server}/slow?s=3", allow_private=True, timeout=0.5)
    assert time.monotonic() - started < 2


async def test_timeout_is_overall_not_per_read(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 1s"):
        await http_request("GET", f"{server}/drip", allow_private=True, timeout=1)
    assert time.monotonic() - started < 2.5


# ----------------------------------------------------------------- http_request


async def test_http_request_json_and_headers(server: str) -> None:
    result = await http_request(
        "post",
        f"{server}/echo?status=201",
        headers={"X-Custom": "yes"},
        json_body={"a": [1, 2]},
        allow_private=True,
    )
    assert result["status"] == 201
    assert result["truncated"] is False
    assert result["headers"]["content-type"] == "application/json"
    assert result["headers"]["etag"] == '"v1"'
    assert result["headers"]["x-ratelimit-remaining"] == "41"
    assert "set-cookie" not in result["headers"]
    echoed = json.loads(result["body"])
    assert echoed["method"] == "POST"
    assert echoed["headers"]["x-custom"] == "yes"
    assert echoed["headers"]["content-type"] == "application/json"
    assert json.loads(echoed["body"]) == {"a": [1, 2]}


async def test_http_request_methods_and_redirects(server: str) -> None:
    put = await http_request("PUT", f"{server}/echo", body="raw body", allow_private=True)
    assert json.loads(put["body"])["body"] == "raw body"
    head = await http_request("HEAD", f"{server}/echo", allow_private=True)
    assert head["status"] == 200 and head["body"] == ""
    # 303 after a POST becomes a GET without the body; 307 keeps method and body.
    see_other = await http_request(
        "POST", f"{server}/redirect?code=303&to=/echo", body="payload", allow_private=True
    )
    assert json.loads(see_other["body"])["method"] == "GET"
    temporary = await http_request(
        "POST", f"{server}/redirect?code=307&to=/echo", body="payload", allow_private=True
    )
    assert json.loads(temporary["body"])["method"] == "POST"
    assert json.loads(temporary["body"])["body"] == "payload"
    not_followed = await http_request(
        "GET", f"{server}/redirect?to=/echo", allow_private=True, follow_redirects=False
    )
    assert not_followed["status"] == 302 and not_followed["headers"]["location"] == "/echo"
    missing = await http_request("GET", f"{server}/nope", allow_private=True)
    assert missing["status"] == 404 and missing["body"] == "not found"


async def test_http_request_argument_errors(server: str) -> None:
    with pytest.raises(ToolError, match="unsupported method"):
        await http_request("TRACE", f"{server}/echo", allow_private=True)
    with pytest.raises(ToolError, match="not both"):
        await http_request("POST", f"{server}/echo", json_body={}, body="x", allow_private=True)


async def test_connection_refused_is_a_tool_error() -> None:
    # A loopback port with nothing listening (bind, read the port, close).
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolError, match="ConnectError"):
        await fetch_text(f"http://127.0.0.1:{port}/", allow_private=True)


async def test_the_http_and_web_fetch_tools_send_the_calls_trace_context(server: str) -> None:
    from everruns.spec import ToolSpec
    from everruns.tools.base import ToolContext
    from everruns.tools.builtins import build_builtin

    parent = "00-" + "1f" * 16 + "-" + "2e" * 8 + "-01"
    ctx = ToolContext(run_id="r", tool_call_id="c", idempotency_key="r:c", attempt=1)
    traced = ToolContext(**{**ctx.__dict__, "trace": {"traceparent": parent}})
    (http,) = build_builtin(ToolSpec(builtin="http"), allow_private_networks=True)
    sent = await http.invoke({"method": "GET", "url": f"{server}/echo"}, traced)
    assert json.loads(sent["body"])["headers"]["traceparent"] == parent
    untraced = await http.invoke({"method": "GET", "url": f"{server}/echo"}, ctx)
    assert "traceparent" not in json.loads(untraced["body"])["headers"]
    own = await http.invoke(
        {"method": "GET", "url": f"{server}/echo", "headers": {"traceparent": "mine"}}, traced
    )
    assert json.loads(own["body"])["headers"]["traceparent"] == "mine", "the model's header wins"
    (fetch,) = build_builtin(ToolSpec(builtin="web_fetch"), allow_private_networks=True)
    page = await fetch.invoke({"url": f"{server}/echo"}, traced)
    assert parent in page["text"]
