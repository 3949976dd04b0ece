"""Host and Origin checks: no DNS rebinding, no cross-site requests that change things.

With auth off the server trusts whoever reaches it on loopback, so it serves only
requests addressed to a loopback name (a rebound `evil.example` carries its own name
in `Host`). For every state-changing method (anything but GET, HEAD and OPTIONS, with
a body or not) a browser's `Origin` must be this server's own origin, and
`Sec-Fetch-Site` must not say cross-site (or same-site from another origin); with auth
on, origins listed by `--cors-origin` are accepted too. Clients that are not browsers
(the CLI, the SDK, curl) send neither header and are not affected.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from everruns.api import problems

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `[::1]`, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class OriginGuard:
    def __init__(self, app: ASGIApp, *, auth_required: bool, cors_origins: Collection[str] = ()):
        self.app = app
        self.auth_required = auth_required
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            response = problems.problem_response(
                403, "forbidden-origin", "Forbidden", refusal, scope.get("path")
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> str | None:
        """Why this request is refused, or None."""
        host = headers.get("host", "")
        if not self.auth_required and host_name(host) not in LOOPBACK_HOSTS:
            return (
                f"this server (auth off) answers only to 127.0.0.1, localhost or [::1], "
                f"not Host {host!r}; use --auth to serve other names"
            )
        if scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site", "").lower()
        own = f"{scope.get('scheme', 'http')}://{host}".lower()
        given = origin.rstrip("/").lower() if origin is not None else None
        if given is not None and given == own:
            return None
        if given is not None and self.auth_required and given in self.cors_origins:
            return None
        if given is not None:
            return f"cross-origin request from {origin!r} refused (not {own})"
        if fetch_site in ("cross-site", "same-site"):
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
        return None
