"""A TCP forwarder: ``python -m tests.scaleout.tcp_forward STATS_FILE LISTEN=TARGET …``.

Each pair is ``host:port=host:port``. The scale-out test runs it on the host, listening on
the address of the virtual network its worker "hosts" (network namespaces) live on, and
forwarding to PostgreSQL and Redis, which listen on 127.0.0.1 only. So the shared services are
reached over a network without being reconfigured, and connect back to a loopback peer their
access rules already trust (PostgreSQL's pg_hba, Redis's bind). ``STATS_FILE`` always holds, as
JSON, how many connections each peer address opened to each target: the proof that the hosts
used the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import Counter
from pathlib import Path

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def main(stats_file: str, pairs: list[str]) -> None:
    opened: Counter[str] = Counter()
    stats = Path(stats_file)
    servers = []
    for pair in pairs:
        listen, target = pair.split("=")
        target_host, target_port = _split(target)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         target: str = target, host: str = target_host,
                         port: int = target_port) -> None:
            peer = writer.get_extra_info("peername")[0]
            opened[f"{peer}->{target}"] += 1
            stats.write_text(json.dumps(dict(opened), sort_keys=True))
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        host, port = _split(listen)
        servers.append(await asyncio.start_server(handle, host, port, reuse_address=True))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
