"""Fetch one image URL under an `ImageSourcePolicy`: checked, pinned, capped, deadlined.

Each hop is checked before any socket exists (`check_url`: scheme, host spelling, allowlist,
a literal address), then its name is resolved here and every address it resolves to is
checked, and the connection goes to an address that was checked: a name that resolves again
to something else (DNS rebinding) is never looked up a second time. TLS still verifies the
certificate for the URL's host name, and the Host header is the URL's host. Redirects are
followed by hand, each hop checked again. No proxy is used: http.client reads none from the
environment.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import quote, urljoin, urlsplit

from orchestrator.image_fetch.address_policy import IPAddress, address_refusal, canonical_host
from orchestrator.image_fetch.errors import (
    ImageFetchError,
    ImageFetchRefusedError,
    ImageFetchTransientError,
    shown,
)
from orchestrator.image_fetch.policy import ImageSourcePolicy

# The seam to DNS: a host name and port to the addresses it resolves to, in the order to try.
Resolver = Callable[[str, int], Sequence[IPAddress]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_URL_CHARS = 8192  # a redirect's Location may be longer than a job's own reference
USER_AGENT = "vlmq-image-fetch"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 << 10
# RFC 3986's reserved and unreserved characters stay; "%" keeps escapes the URL already has.
_PATH_SAFE = "/:@!$&'()*+,;=%-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


@dataclass(frozen=True, slots=True)
class FetchTarget:
    """One hop's URL, checked: where to connect and what to ask for."""

    url: str  # as given; messages show it cut short
    scheme: str  # "http" or "https"
    host: str  # canonical: a lower-case ASCII name, or an IP address as str
    address: IPAddress | None  # set when the host is an IP address (already checked)
    port: int
    request_target: str  # path and query, ASCII, percent-encoded


def check_url(url: str, policy: ImageSourcePolicy) -> FetchTarget:
    """The URL's target if the policy allows it as far as can be told without DNS; opens no
    socket. Raises ImageFetchRefusedError saying what was refused and why."""
    if not isinstance(url, str):
        raise ImageFetchRefusedError(f"an image URL must be a str, got {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise ImageFetchRefusedError(
            f"URL {shown(url)} is {len(url):,} characters, over the limit of {MAX_URL_CHARS:,}"
        )
    if any(char.isspace() or not char.isprintable() or char == "\\" for char in url):
        raise ImageFetchRefusedError(
            f"URL {shown(url)} holds whitespace, control characters or a backslash; "
            f"percent-encode them"
        )
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS:
        raise ImageFetchRefusedError(f"URL {shown(url)}: only http and https URLs are fetched")
    if scheme == "http" and not policy.allow_http:
        raise ImageFetchRefusedError(f"URL {shown(url)}: this server fetches https URLs only")
    if "@" in parts.netloc:
        raise ImageFetchRefusedError(f"URL {shown(url)}: credentials in URLs are not supported")
    if not parts.hostname:
        raise ImageFetchRefusedError(f"URL {shown(url)} has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ImageFetchRefusedError(f"URL {shown(url)} has an invalid port") from None
    try:
        host = canonical_host(parts.hostname)
    except ImageFetchRefusedError as error:
        raise ImageFetchRefusedError(f"URL {shown(url)}: {error}") from None
    address = None if isinstance(host, str) else host
    if not policy.allows_host(str(host), port):
        raise ImageFetchRefusedError(
            f"URL {shown(url)}: host {host} on port {port} is not on this server's list of "
            f"allowed image hosts"
        )
    if address is not None:
        _check_address(url, str(host), address, policy)
    request_target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_QUERY_SAFE)
    return FetchTarget(url, scheme, str(host), address, port, request_target)


def system_resolve(host: str, port: int) -> Sequence[IPAddress]:
    """The addresses `host` resolves to for TCP, in getaddrinfo's order, each once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        if error.errno in _NO_SUCH_NAME:
            raise ImageFetchError(f"host {shown(host)} does not resolve (no such name)") from None
        raise ImageFetchTransientError(
            f"resolving host {shown(host)} failed: {error.strerror or error}"
        ) from None
    addresses: dict[IPAddress, None] = {}
    for info in infos:
        addresses.setdefault(ip_address(info[4][0]), None)
    return tuple(addresses)


_NO_SUCH_NAME = {
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
}


def resolve_addresses(
    target: FetchTarget, policy: ImageSourcePolicy, resolve: Resolver = system_resolve
) -> tuple[IPAddress, ...]:
    """Every address the target's host resolves to, each checked; one refused refuses all."""
    if target.address is not None:
        return (target.address,)
    addresses = tuple(resolve(target.host, target.port))
    if not addresses:
        raise ImageFetchError(f"host {shown(target.host)} resolves to no address")
    for address in addresses:
        _check_address(target.url, target.host, address, policy)
    return addresses


def fetch_url(
    url: str, policy: ImageSourcePolicy, resolve: Resolver = system_resolve
) -> bytes:
    """The body of `url`, an image of an allowed type within policy.max_bytes."""
    deadline = _Deadline(policy.total_timeout_s)
    current = url
    for _ in range(policy.max_redirects + 1):
        target = check_url(current, policy)
        addresses = resolve_addresses(target, policy, resolve)
        reply = _fetch_once(target, addresses, policy, deadline)
        if isinstance(reply, bytes):
            return reply
        current = urljoin(current, reply)
    raise ImageFetchError(
        f"URL {shown(url)} redirected more than {policy.max_redirects} times"
    )


def _check_address(url: str, host: str, address: IPAddress, policy: ImageSourcePolicy) -> None:
    why = address_refusal(
        address,
        allow_loopback=policy.allow_loopback,
        allow_private_networks=policy.allow_private_networks,
    )
    if why is not None:
        resolved = "" if host == str(address) else f" resolves to {address}, which"
        raise ImageFetchRefusedError(
            f"URL {shown(url)}: host {host}{resolved} is {why}; this server does not fetch "
            f"images from such addresses"
        )


class _Deadline:
    """The whole fetch's time; when it passes, the open socket is shut to end any read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.passed = False

    def left(self) -> float:
        return self.at - time.monotonic()

    def cut(self, sock: socket.socket) -> None:
        self.passed = True
        # The plain socket's shutdown, also under TLS: it wakes a read blocked on another
        # thread without touching the TLS state that read is using. Closed already: no read.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def error(self, target: FetchTarget) -> ImageFetchTransientError:
        return ImageFetchTransientError(
            f"URL {shown(target.url)}: fetching took longer than {self.seconds:g} s"
        )


def _fetch_once(
    target: FetchTarget,
    addresses: tuple[IPAddress, ...],
    policy: ImageSourcePolicy,
    deadline: _Deadline,
) -> bytes | str:
    """The body of a 200, or the Location of a redirect."""
    connection = _connect(target, addresses, policy, deadline)
    timer = threading.Timer(max(deadline.left(), 0.0), deadline.cut, (connection.sock,))
    timer.daemon = True
    timer.start()
    try:
        reply = _exchange(connection, target, policy)
    except Exception as error:
        # A reply cut off at the deadline can look like anything: short headers, a bad type.
        if deadline.passed:
            raise deadline.error(target) from None
        if isinstance(error, OSError | http.client.HTTPException):
            raise _transport_error(target, error) from None
        raise
    finally:
        timer.cancel()
        connection.close()
    if deadline.passed:  # a body read until the connection closed may have been cut short
        raise deadline.error(target)
    return reply


def _connect(
    target: FetchTarget,
    addresses: tuple[IPAddress, ...],
    policy: ImageSourcePolicy,
    deadline: _Deadline,
) -> http.client.HTTPConnection:
    tls = None
    if target.scheme == "https":
        try:
            tls = ssl.create_default_context(cafile=policy.tls_ca_file)
        except OSError as error:  # the CA file is the server's configuration, not the job's
            raise ImageFetchTransientError(
                f"cannot load the CAs to verify https with ({_describe(error)})"
            ) from None
    failure: OSError | None = None
    for address in addresses:
        if deadline.left() <= 0:
            raise deadline.error(target)
        timeout = min(policy.timeout_s, deadline.left())
        connection: http.client.HTTPConnection = (
            _PinnedHTTPConnection(target.host, target.port, address, timeout)
            if tls is None
            else _PinnedHTTPSConnection(target.host, target.port, address, timeout, tls)
        )
        try:
            connection.connect()
        except ssl.SSLCertVerificationError as error:
            connection.close()
            raise ImageFetchError(
                f"URL {shown(target.url)}: the server's TLS certificate does not verify for "
                f"{target.host} ({error.verify_message})"
            ) from None
        except OSError as error:
            connection.close()
            failure = error
            continue
        assert connection.sock is not None
        connection.sock.settimeout(policy.timeout_s)  # each read, from here on
        return connection
    assert failure is not None
    raise ImageFetchTransientError(
        f"URL {shown(target.url)}: could not connect to {target.host} port {target.port} "
        f"({_describe(failure)})"
    )


def _exchange(
    connection: http.client.HTTPConnection, target: FetchTarget, policy: ImageSourcePolicy
) -> bytes | str:
    connection.putrequest("GET", target.request_target, skip_accept_encoding=True)
    connection.putheader("Accept", ", ".join(policy.allowed_content_types))
    connection.putheader("Accept-Encoding", "identity")  # the cap counts the image's own bytes
    connection.putheader("User-Agent", USER_AGENT)
    connection.putheader("Connection", "close")
    connection.endheaders()
    response = connection.getresponse()
    status = response.status
    answered = f"URL {shown(target.url)} answered HTTP {status} {shown(response.reason[:60])}"
    if status in REDIRECT_STATUSES:
        location = response.getheader("Location")
        if not location:
            raise ImageFetchError(f"{answered} without a Location to redirect to")
        return location
    if status in (408, 429) or status >= 500:
        raise ImageFetchTransientError(answered)
    if status != 200:
        raise ImageFetchError(answered)
    return _read_body(response, target, policy)


def _read_body(
    response: http.client.HTTPResponse, target: FetchTarget, policy: ImageSourcePolicy
) -> bytes:
    content_type = response.getheader("Content-Type")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in policy.allowed_content_types:
        got = "no Content-Type" if content_type is None else f"type {shown(content_type[:80])}"
        raise ImageFetchError(
            f"URL {shown(target.url)} answered with {got}; an image must be one of "
            f"{', '.join(policy.allowed_content_types)}"
        )
    declared = response.getheader("Content-Length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ImageFetchError(
                f"URL {shown(target.url)} answered with an invalid Content-Length "
                f"{shown(declared[:40])}"
            )
        if int(declared) > policy.max_bytes:
            raise ImageFetchError(
                f"URL {shown(target.url)}: the image is {int(declared):,} bytes, over the limit "
                f"of {policy.max_bytes:,}"
            )
    chunks: list[bytes] = []
    num_bytes = 0
    # One byte past the cap tells a body over it from one that fills it exactly.
    while chunk := response.read(min(_CHUNK_BYTES, policy.max_bytes + 1 - num_bytes)):
        num_bytes += len(chunk)
        if num_bytes > policy.max_bytes:
            raise ImageFetchError(
                f"URL {shown(target.url)}: the image is over the limit of "
                f"{policy.max_bytes:,} bytes (reading stopped there)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_error(target: FetchTarget, error: BaseException) -> Exception:
    where = f"URL {shown(target.url)}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return ImageFetchError(f"{where}: the TLS certificate does not verify for {target.host}")
    if isinstance(error, http.client.IncompleteRead | http.client.RemoteDisconnected):
        return ImageFetchTransientError(f"{where}: the server closed the connection early")
    if isinstance(error, http.client.HTTPException):
        # A status line or headers that are not HTTP: the server is broken or hostile.
        return ImageFetchError(f"{where}: the reply is not valid HTTP ({type(error).__name__})")
    return ImageFetchTransientError(f"{where}: {_describe(error)}")


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return getattr(error, "strerror", None) or type(error).__name__


def _open_socket(address: IPAddress, port: int, timeout: float | None) -> socket.socket:
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    if isinstance(address, IPv4Address):
        family, sockaddr = socket.AF_INET, (str(address), port)
    else:
        assert isinstance(address, IPv6Address)
        family, sockaddr = socket.AF_INET6, (str(address), port, 0, 0)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to `address`, the one that was checked, never to what `host` resolves to now."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = _open_socket(self.address, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As `_PinnedHTTPConnection`; TLS sends SNI and verifies the certificate for `host`."""

    def __init__(
        self, host: str, port: int, address: IPAddress, timeout: float, tls: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self.address = address
        self.tls = tls

    def connect(self) -> None:
        sock = _open_socket(self.address, self.port, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
