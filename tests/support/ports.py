"""Free TCP ports for the servers tests and benchmarks start (gateways, Redis, Flower, …)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on at this moment. (Another process could take
    it before the caller binds it; the servers started with it fail loudly if so.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
