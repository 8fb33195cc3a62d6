"""CPU that canaryd's own process spends per nginx change over the SSH transport, one command against step by
step (NginxProxy.one_command), the two ways alternating on one nginx and one pooled connection.

    .venv/bin/python bench/nginx_apply_cpu.py --changes 100 --net 82

Each change is `apply` then `verify` of a new generation (a fresh adapter, as the engine makes one per tick),
with the old workers observed. Reported per way: CPU of this process per change (time.process_time: the
event loop, asyncssh, httpx; not sshd, the shell or nginx) and the wall time of apply alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for tests.fixtures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100, help="changes per way (default 100)")
    parser.add_argument("--net", type=int, default=82, help="use 127.0.NET.0/24 (default 82)")
    args = parser.parse_args()
    if not 1 <= args.changes <= 2000 or not 1 <= args.net <= 254:
        parser.error("--changes must be 1..2000 and --net 1..254")

    from tests.fixtures.apps import start_app
    from tests.fixtures.nginx import start_nginx
    from tests.fixtures.sshd import running_sshd

    from canaryd.domain.types import Backend
    from canaryd.proxies.base import RouteTable
    from canaryd.proxies.nginx import NginxProxy
    from canaryd.transports.ssh import SshPool

    app = start_app(f"127.0.{args.net}.2", "v1")
    nginx = start_nginx(f"127.0.{args.net}.4")
    spec = nginx.spec(access_log=None)
    cpu: dict[bool, list[float]] = {True: [], False: []}
    wall: dict[bool, list[float]] = {True: [], False: []}
    try:
        with running_sshd(host=f"127.0.{args.net}.5") as sshd:
            pool = SshPool(sshd.known_hosts, [sshd.client_key], connect_timeout=5)
            transport = pool.transport(sshd.host, sshd.port, sshd.user)
            try:
                async with httpx.AsyncClient() as http:
                    for i in range(2 * args.changes + 2):
                        way = i % 2 == 0
                        generation = i + 1
                        table = RouteTable(
                            1, "bench", (Backend(1, app.host, app.port, 1, "stable"),), generation
                        )
                        proxy = NginxProxy(
                            transport, spec, nginx.listen.rsplit(":", 1)[0], http, one_command=way
                        )
                        c0, t0 = time.process_time(), time.perf_counter()
                        await proxy.apply(table)
                        t1 = time.perf_counter()
                        if not await proxy.verify(table):
                            raise RuntimeError("not served")
                        if i >= 2:  # the first change of each way warms up (connection, shells, SFTP)
                            cpu[way].append((time.process_time() - c0) * 1000)
                            wall[way].append((t1 - t0) * 1000)
            finally:
                await pool.close()
    finally:
        nginx.cleanup()
        app.stop()
    print(f"{args.changes} changes per way, alternating; ms")
    for way, name in ((False, "step by step (SFTP file, 2 commands)"), (True, "one command")):
        print(
            f"  {name:<40} CPU per change p50 {statistics.median(cpu[way]):6.2f} mean {statistics.mean(cpu[way]):6.2f}"
            f"   apply wall p50 {statistics.median(wall[way]):6.1f}"
        )
    ratio = statistics.mean(cpu[True]) / statistics.mean(cpu[False])
    print(f"  CPU per change, one command / step by step: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
