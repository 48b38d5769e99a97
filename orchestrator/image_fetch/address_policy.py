"""Which IP addresses an image fetch may connect to, and how a URL's host is read: pure functions.

Everything not plainly public is refused: loopback and private networks unless the policy
allows them; link-local, multicast, unspecified, reserved and cloud metadata addresses always.
An IPv6 address that carries an IPv4 one (mapped, compatible, translated, NAT64, 6to4) is
judged as that IPv4 address, so `::ffff:169.254.169.254` is the metadata address it reaches.

A host that spells an IPv4 address in any form but dotted decimal (`2130706433`, `0177.0.0.1`,
`0x7f.1`, `127.1`) is refused outright: libc would read it as an address our allowlist and
messages would not recognise, and no honest URL needs it.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from orchestrator.image_fetch.errors import ImageFetchRefusedError, shown

IPAddress = IPv4Address | IPv6Address

# Instance metadata services: they hand out credentials, so no flag opens them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        IPv4Address("169.254.170.2"),  # AWS ECS task credentials
        IPv6Address("fd00:ec2::254"),  # AWS over IPv6
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
        IPv4Address("168.63.129.16"),  # Azure's wire server: a public-looking address
    }
)

# Opened by allow_private_networks: RFC 1918, carrier-grade NAT (RFC 6598), unique local.
PRIVATE_NETWORKS: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("100.64.0.0/10"),
    IPv6Network("fc00::/7"),
)

# IPv6 prefixes whose low 32 bits are an IPv4 address the packet ends up at.
_LOW_32_EMBEDDING = (
    IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix
    IPv6Network("::/96"),  # IPv4-compatible (deprecated); :: and ::1 are handled first
)
_SIX_TO_FOUR = IPv6Network("2002::/16")  # the IPv4 address is bits 16 to 48
# Refused whole: Teredo tunnels to an obfuscated IPv4 address; local-use NAT64 puts the IPv4
# address where the operator's prefix length says, which the address alone does not tell.
_TUNNELS = (IPv6Network("2001::/32"), IPv6Network("64:ff9b:1::/48"))
_BROADCAST = IPv4Address("255.255.255.255")


def address_refusal(
    address: IPAddress, *, allow_loopback: bool = False, allow_private_networks: bool = False
) -> str | None:
    """Why `address` may not be connected to, in a few words; None when it may."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        why = address_refusal(
            embedded, allow_loopback=allow_loopback, allow_private_networks=allow_private_networks
        )
        return None if why is None else f"{why} (it carries the IPv4 address {embedded})"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified or address == _BROADCAST:
        return "not a host address"  # 0.0.0.0 reaches this very machine on Linux
    if address.is_loopback:
        return None if allow_loopback else "loopback (this machine)"
    if any(address in network for network in PRIVATE_NETWORKS):
        return None if allow_private_networks else "a private network address"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, IPv6Address) and any(address in net for net in _TUNNELS):
        return "a tunnel address (Teredo or local-use NAT64)"
    # The IANA special-purpose registry (documentation, benchmarking, reserved, ...).
    if not address.is_global:
        return "reserved, not a public address"
    return None


def embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 one carries and reaches, if it is one of those forms."""
    if isinstance(address, IPv4Address) or address.is_loopback or address.is_unspecified:
        return None
    if any(address in network for network in _LOW_32_EMBEDDING):
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in _SIX_TO_FOUR:
        return IPv4Address((int(address) >> 80) & 0xFFFF_FFFF)
    return None


# --- hosts as URLs spell them ----------------------------------------------------------------

_NUMERIC_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_HOST_NAME = 253


def libc_ipv4(host: str) -> IPv4Address | None:
    """The address inet_aton(3) reads `host` as: 1 to 4 parts, each decimal, octal (a leading
    0) or hex (0x), the last filling the bytes left. None when it reads no address."""
    parts = host.lower().split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.fullmatch(part) for part in parts):
        return None
    try:
        numbers = [_libc_number(part) for part in parts]
    except ValueError:
        return None  # "09": octal with a 9, which inet_aton refuses too
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return IPv4Address(value)


def canonical_host(host: str) -> str | IPAddress:
    """A URL's host (as `urlsplit().hostname` gives it) as an address, or as a lower-case
    ASCII host name; refuses numeric spellings other than dotted decimal, and bad names."""
    if ":" in host:  # only an IPv6 literal holds a colon once the brackets are gone
        try:
            address = ip_address(host)
        except ValueError:
            raise ImageFetchRefusedError(f"host {shown(host)} is no valid IPv6 address") from None
        if isinstance(address, IPv6Address) and address.scope_id is not None:
            raise ImageFetchRefusedError(f"host {shown(host)} names a zone; addresses with a "
                                         f"zone are link-local and not allowed")
        return address
    name = host.lower()
    labels = name.removesuffix(".").split(".")
    if _NUMERIC_PART.fullmatch(labels[-1]):
        # WHATWG's URL parser and libc take a host ending in a number as an IPv4 address.
        read_as = libc_ipv4(name)
        if read_as is not None and name == str(read_as):
            return read_as
        means = f" (libc reads it as {read_as})" if read_as is not None else ""
        raise ImageFetchRefusedError(
            f"host {shown(host)} is not an IPv4 address in dotted decimal{means}; numeric hosts "
            f"must be written as four decimal numbers, e.g. 192.0.2.1"
        )
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ImageFetchRefusedError(f"host {shown(host)} is not a valid host name") from None
    if len(ascii_name) > _MAX_HOST_NAME or not all(
        _LABEL.fullmatch(label) for label in ascii_name.removesuffix(".").split(".")
    ):
        raise ImageFetchRefusedError(f"host {shown(host)} is not a valid host name")
    return ascii_name.removesuffix(".")


def _libc_number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part)
