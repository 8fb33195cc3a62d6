"""A stand-in application for the demo and the tests (copied from the shared contract kit). Stdlib only.

Its behaviour follows the version string, so a canary's health is decided by what is deployed:
  *bad*   30 % of requests answer 500        *slow*  every request takes 300 ms more
  *dead*  /health answers 503                *err2*  2 % of requests answer 500
Every response carries the version in the body and in the X-Version header.
"""

import argparse
import random
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    a = p.parse_args()
    v = a.version
    error_rate = 0.30 if "bad" in v else 0.02 if "err2" in v else 0.0
    delay = 0.3 if "slow" in v else 0.0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every answer on a kept-alive connection.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Version", v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                self._send(503 if "dead" in v else 200, v + "\n")
                return
            if delay:
                time.sleep(delay)
            if error_rate and random.random() < error_rate:
                self._send(500, v + " error\n")
            else:
                self._send(200, v + "\n")

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
