"""A stand-in application for the demo and the tests (copied from the shared contract kit). Stdlib only.

Its behaviour follows the version string, so a canary's health is decided by what is deployed:
  *bad*   30 % of requests answer 500        *slow*  every request takes 300 ms more
  *dead*  /health answers 503                *err2*  2 % of requests answer 500
Every response carries the version in the body and in the X-Version header.
/metrics serves Prometheus text format: http_requests_total{code,version} and the latency histogram
http_request_duration_seconds{version} of the requests served (not /health or /metrics themselves).
"""

import argparse
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Prometheus' default histogram buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request counters and a latency histogram, safe across the server's threads."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.lock = threading.Lock()
        self.codes: dict[int, int] = {200: 0, 500: 0}  # series exist from the start (increase() needs that)
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, code: int, seconds: float) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            for i, edge in enumerate(BUCKETS):
                if seconds <= edge:
                    self.buckets[i] += 1
            self.count += 1
            self.total += seconds

    def render(self) -> str:
        v = self.version  # letters, digits and . _ + - only (canaryd validates versions)
        with self.lock:
            lines = [
                "# HELP http_requests_total Requests served, by status code.",
                "# TYPE http_requests_total counter",
            ]
            lines += [
                f'http_requests_total{{code="{c}",version="{v}"}} {n}' for c, n in sorted(self.codes.items())
            ]
            lines += [
                "# HELP http_request_duration_seconds Time to serve a request.",
                "# TYPE http_request_duration_seconds histogram",
            ]
            lines += [
                f'http_request_duration_seconds_bucket{{le="{edge}",version="{v}"}} {n}'
                for edge, n in zip(BUCKETS, self.buckets, strict=True)
            ]
            lines += [
                f'http_request_duration_seconds_bucket{{le="+Inf",version="{v}"}} {self.count}',
                f'http_request_duration_seconds_sum{{version="{v}"}} {self.total}',
                f'http_request_duration_seconds_count{{version="{v}"}} {self.count}',
            ]
        return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    a = p.parse_args()
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    # socketserver's default backlog is 5: a burst of new connections while the process waits for a core
    # overflows it, and the kernel drops their SYNs (a 1 s retransmit each). Servers' usual backlog instead.
    ThreadingHTTPServer.request_queue_size = 128
    ThreadingHTTPServer((a.host, a.port), handler_for(a.version)).serve_forever()


def handler_for(v: str) -> type[BaseHTTPRequestHandler]:
    """The request handler of version `v`, whose name sets its behaviour: "bad" answers 30 % errors,
    "err2" 2 %, "slow" takes 0.3 s, "dead" fails its health check."""
    error_rate = 0.30 if "bad" in v else 0.02 if "err2" in v else 0.0
    delay = 0.3 if "slow" in v else 0.0
    metrics = Metrics(v)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every answer on a kept-alive connection.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Version", v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                self._send(503 if "dead" in v else 200, v + "\n")
                return
            if self.path.startswith("/metrics"):
                self._send(200, metrics.render(), "text/plain; version=0.0.4")
                return
            started = time.monotonic()
            if delay:
                time.sleep(delay)
            code = 500 if error_rate and random.random() < error_rate else 200
            self._send(code, v + (" error\n" if code == 500 else "\n"))
            metrics.observe(code, time.monotonic() - started)

    return Handler


if __name__ == "__main__":
    main()
