"""A local, rate-limited enrichment API: the kind of service a data-processing agent
works through. Run it with `python -m data_processing.api --port 8787` (PYTHONPATH=examples).

POST /enrich {"records": [{"id", "name", "city"}, ...]} with an `Idempotency-Key` header
answers {"results": [...]} — each record enriched with a score and a region. It refuses a
share of first attempts, by the order the keys first come: two in eight with 429 and
`Retry-After: 1`, one in eight with 503 (the same header). A key it has answered is answered again
from its cache, so a client that retries (after a crash, say) never has a record
processed twice. GET /stats says what happened: requests, 429s, 503s, and how many times
each record was processed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REGIONS = {"Berlin": "EU", "Paris": "EU", "Lagos": "AF", "Lima": "SA", "Osaka": "AS"}


class EnrichAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, retry_after: float = 1.0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.cache: dict[str, dict[str, Any]] = {}
        self.attempts: Counter[str] = Counter()
        self.order: dict[str, int] = {}
        self.processed: Counter[str] = Counter()
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        self.stats = Counter[str]()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, key: str, records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.stats["requests"] += 1
            self.arrivals[key].append(time.time())
            if key in self.cache:
                self.stats["replayed"] += 1
                return 200, self.cache[key]
            if key not in self.attempts:
                self.order[key] = len(self.order)
            self.attempts[key] += 1
            bucket = self.order[key] % 8  # by the order the keys first came: a steady share
            if self.attempts[key] == 1 and bucket in (0, 1):
                self.stats["429"] += 1
                return 429, {"error": "slow down"}
            if self.attempts[key] == 1 and bucket == 2:
                self.stats["503"] += 1
                return 503, {"error": "overloaded, try again"}
            results = []
            for record in records:
                self.processed[str(record["id"])] += 1
                score = int(hashlib.sha256(record["name"].encode()).hexdigest()[:4], 16) % 100
                results.append(
                    {"id": record["id"], "score": score, "region": REGIONS.get(record["city"], "?")}
                )
            self.cache[key] = {"results": results}
            return 200, self.cache[key]

    def arrivals_by_key(self) -> dict[str, list[float]]:
        """When each request arrived, by idempotency key (a retry comes after Retry-After)."""
        with self.lock:
            return {key: list(times) for key, times in self.arrivals.items()}

    def summary(self) -> dict[str, Any]:
        with self.lock:
            counts = Counter(self.processed.values())
            return {
                **self.stats,
                "records": len(self.processed),
                "processed_more_than_once": sum(n for times, n in counts.items() if times > 1),
            }


class _Handler(BaseHTTPRequestHandler):
    server: EnrichAPI

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", f"{self.server.retry_after:g}")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._reply(200, self.server.summary())
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            records = list(body["records"])
        except (ValueError, KeyError, TypeError):
            self._reply(400, {"error": 'send {"records": [...]}'})
            return
        key = self.headers.get("Idempotency-Key")
        if self.path != "/enrich" or not key:
            self._reply(400, {"error": "POST /enrich with an Idempotency-Key header"})
            return
        self._reply(*self.server.answer(key, records))

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args()
    server = EnrichAPI(args.port, args.retry_after)
    print(server.url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
