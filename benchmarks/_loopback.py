"""ICE on 127.0.0.1 only, for every benchmark process that makes aiortc peers.

aioice never offers a loopback candidate by itself and would gather every address of this
machine; the benchmarks must stay on loopback. This is the same patch as the test suite's
``loopback_only_ice`` fixture (tests/lavia_live/server/conftest.py), applied process-wide:
call :func:`use_loopback_only_ice` once, before the first peer connection is made.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import aioice.ice

_installed = False


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # an mDNS name (*.local) or other host name


def use_loopback_only_ice() -> None:
    """Every ICE agent of this process offers 127.0.0.1 only and ignores other remote
    candidates. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses
    add = aioice.ice.Connection.add_remote_candidate

    async def add_loopback(self: aioice.ice.Connection, candidate: Any) -> None:
        if candidate is None or _loopback(candidate.host):
            await add(self, candidate)

    aioice.ice.Connection.add_remote_candidate = add_loopback  # type: ignore[method-assign]
