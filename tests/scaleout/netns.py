"""Worker "hosts" on one machine: a network namespace each, on a virtual network of their own.

The host side is a bridge with the network's first address (``gateway``); each namespace gets a
veth pair into the bridge, its own address and loopback, and runs its commands under its own
host name (a UTS namespace). Inside, 127.0.0.1 is the namespace's own loopback: PostgreSQL and
Redis are reachable only across the virtual network, through ``gateway``.

Needs root and iproute2 (``ip netns``). :func:`available` says whether this machine can.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def available() -> tuple[bool, str]:
    """(True, "") when namespaces can be made here, else (False, why not)."""
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    probe = f"hitlprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        return False, f"ip netns add failed: {exc} {stderr.strip()}"
    return True, ""


class VirtualHosts:
    """``count`` namespaces named ``<prefix>-<host name>`` on the bridge ``<tag>br``."""

    def __init__(self, names: Sequence[str], tag: str | None = None) -> None:
        # Short, per-process names: interface names have at most 15 characters, and two test
        # runs on one machine must not collide.
        self.tag = tag or f"hs{os.getpid()}"
        third = os.getpid() % 200 + 20
        self.network = f"10.213.{third}"
        self.gateway = f"{self.network}.1"
        self.names = list(names)
        self.addresses = {name: f"{self.network}.{11 + i}" for i, name in enumerate(names)}
        self.bridge = f"{self.tag}br"
        self._made: list[tuple[str, ...]] = []

    def namespace(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def up(self) -> VirtualHosts:
        remove_stale()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", "del", self.bridge))
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            ns, host_end, ns_end = self.namespace(name), f"{self.tag}h{i}", f"{self.tag}n{i}"
            _ip("netns", "add", ns)
            self._made.append(("netns", "del", ns))
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a command on host ``name``: in its namespace, under
        its host name (so Celery's ``%h`` and the logs name it)."""
        return ["ip", "netns", "exec", self.namespace(name), "unshare", "--uts",
                "sh", "-c", 'hostname "$0" && exec "$@"', name]

    def down(self) -> None:
        # Deleting a namespace deletes its end of the veth pair, and with it the host end.
        for args in reversed(self._made):
            subprocess.run(["ip", *args], capture_output=True, timeout=20)
        self._made.clear()


def remove_stale() -> None:
    """Remove the namespaces and bridges of earlier runs whose process is gone (killed before
    it could tidy up), so their addresses cannot clash with this run's."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=20).stdout
    pids = {int(m.group(1)) for m in re.finditer(r"^hs(\d+)-\S+", listing, re.MULTILINE)}
    for pid in pids - {os.getpid()}:
        if os.path.exists(f"/proc/{pid}"):
            continue
        for name in re.findall(rf"^(hs{pid}-\S+)", listing, re.MULTILINE):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", f"hs{pid}br"], capture_output=True, timeout=20)
