"""Every test here runs under a guard that keeps its traffic on loopback, whatever the code
under test does: an audit hook refuses any connect to, and any name lookup of, anything but
a loopback address, before the socket call runs. It also records the connects, so a test can
show that a refused fetch opened no connection at all."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

_recorders: list[list[tuple[str, object]]] = []


class OffLoopbackError(AssertionError):
    """The code under test tried to reach past loopback: the test has failed, loudly."""


def _is_loopback_literal(host: object) -> bool:
    try:
        return ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _guard(event: str, args: tuple[object, ...]) -> None:
    if not _recorders:
        return
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback_literal(host):
            raise OffLoopbackError(f"a test tried to connect to {address!r}")
        for recorder in _recorders:
            recorder.append((event, address))
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        host = args[0] if event != "socket.sendto" else args[1]
        if isinstance(host, tuple):
            host = host[0]
        if not _is_loopback_literal(host):
            raise OffLoopbackError(f"a test tried to look up or send to {host!r}")
        for recorder in _recorders:
            recorder.append((event, host))
    elif event in ("socket.gethostbyaddr", "socket.getnameinfo"):
        raise OffLoopbackError(f"a test made a reverse lookup ({event}), which may ask DNS")


# Audit hooks cannot be removed; this one does nothing while no test records.
sys.addaudithook(_guard)


@pytest.fixture(autouse=True)
def socket_calls() -> Iterator[list[tuple[str, object]]]:
    """The connects and lookups this test made, each to a loopback address (or it failed)."""
    calls: list[tuple[str, object]] = []
    _recorders.append(calls)
    try:
        yield calls
    finally:
        _recorders.remove(calls)
