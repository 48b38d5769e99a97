"""What the serving side lets a job's image references read; defaults in one place.

The submitter never chooses this: a reference is only a request, judged here where it is read.
By default no path is readable (no root) and a URL may name any host whose every address is
public; the address policy applies even to hosts on the allowlist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from orchestrator.image_fetch.address_policy import canonical_host
from orchestrator.image_fetch.errors import ImageFetchRefusedError
from orchestrator.job_limits import MAX_IMAGE_BYTES

IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One allowlist entry: `host`, `*.suffix` (its subdomains, not itself), either `:port`."""

    host: str  # canonical: lower case, no trailing dot; an IPv6 address without brackets
    port: int | None  # None: any port
    subdomains: bool  # from `*.host`

    @classmethod
    def parse(cls, entry: str) -> HostPattern:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"an allowed host must be a non-empty str, got {entry!r}")
        host, port = _split_port(entry)
        subdomains = host.startswith("*.")
        host = host.removeprefix("*.")
        try:
            canonical = canonical_host(host)
        except ImageFetchRefusedError as error:
            raise ValueError(f"allowed host {entry!r}: {error}") from None
        if subdomains and not isinstance(canonical, str):
            raise ValueError(f"allowed host {entry!r}: '*.' may only lead a host name")
        return cls(str(canonical), port, subdomains)

    def matches(self, host: str, port: int) -> bool:
        """`host` canonical, as `canonical_host` gives it."""
        if self.port is not None and port != self.port:
            return False
        if self.subdomains:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True, slots=True)
class ImageSourcePolicy:
    image_root: str | None = None  # an absolute directory; None: ImagePath is refused
    # None: any host whose addresses all pass the address policy. A tuple: only these, each
    # "host", "*.suffix" or either with ":port" (e.g. "images.example.com", "*.cdn.net:443").
    allowed_hosts: tuple[str, ...] | None = None
    allow_loopback: bool = False  # 127.0.0.0/8, ::1 (and the IPv6 forms that carry them)
    allow_private_networks: bool = False  # RFC 1918, 100.64.0.0/10, fc00::/7; never metadata
    allow_http: bool = True  # plain http as well as https (redirects included)
    timeout_s: float = 10.0  # to connect, and for each read
    total_timeout_s: float = 30.0  # for one URL, redirects included: a trickling server ends
    max_bytes: int = MAX_IMAGE_BYTES  # read from a URL or a file; more is refused, not cut
    allowed_content_types: tuple[str, ...] = IMAGE_CONTENT_TYPES
    max_redirects: int = 3
    tls_ca_file: str | None = None  # PEM CAs that https certificates must chain to; None: the
    # system's trust store. Either way the certificate must name the URL's host.
    host_patterns: tuple[HostPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_root is not None and not (
            isinstance(self.image_root, str) and os.path.isabs(self.image_root)
        ):
            # Ray workers do not share the driver's working directory.
            raise ValueError(f"image_root must be an absolute path, got {self.image_root!r}")
        if self.allowed_hosts is not None and not isinstance(self.allowed_hosts, tuple):
            raise ValueError(
                f"allowed_hosts must be a tuple of str or None, got "
                f"{type(self.allowed_hosts).__name__}"
            )
        patterns = tuple(HostPattern.parse(entry) for entry in self.allowed_hosts or ())
        object.__setattr__(self, "host_patterns", patterns)
        for name in ("timeout_s", "total_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name, minimum in (("max_bytes", 1), ("max_redirects", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.tls_ca_file is not None and not (
            isinstance(self.tls_ca_file, str) and os.path.isabs(self.tls_ca_file)
        ):
            raise ValueError(f"tls_ca_file must be an absolute path, got {self.tls_ca_file!r}")
        types = self.allowed_content_types
        if not isinstance(types, tuple) or not all(
            isinstance(t, str) and t == t.lower() and t.count("/") == 1 for t in types
        ):
            raise ValueError(
                f"allowed_content_types must be a tuple of lower-case media types like "
                f"'image/png', got {types!r}"
            )

    def allows_host(self, host: str, port: int) -> bool:
        """Whether the allowlist admits `host` (canonical) on `port`; no allowlist admits all."""
        if self.allowed_hosts is None:
            return True
        return any(pattern.matches(host, port) for pattern in self.host_patterns)


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [IPv6] or [IPv6]:port
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"allowed host {entry!r}: an IPv6 address is written [addr]:port")
        return host, _port(entry, rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None  # a bare IPv6 address has several colons and no port


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"allowed host {entry!r}: the port must be 1 to 65535")
    return int(text)
