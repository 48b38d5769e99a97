"""The address policy as a pure function on IP literals, and how hosts are read from URLs.

Public addresses here (8.8.8.8, ...) are values only: nothing connects to them, and the
guard in conftest.py would fail any test that tried.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.image_fetch import ImageFetchRefusedError, ImageSourcePolicy
from orchestrator.image_fetch.address_policy import address_refusal, canonical_host, libc_ipv4
from orchestrator.image_fetch.url_fetch import check_url

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("100.64.0.1", "private"),  # carrier-grade NAT
    ("100.127.255.254", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("100.100.100.200", "metadata"),
    ("168.63.129.16", "metadata"),
    ("169.254.0.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "not a host address"),
    ("255.255.255.255", "not a host address"),
    ("0.1.2.3", "reserved"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "reserved"),  # documentation
    ("198.18.0.1", "reserved"),  # benchmarking
    ("::1", "loopback"),
    ("::", "not a host address"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "reserved"),
    # IPv6 forms that carry an IPv4 address are judged as that address.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "not a host address"),
    ("::ffff:0:7f00:1", "loopback"),  # IPv4-translated
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a00:1", "private"),
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:7f00:1:ffff::5", "loopback"),
    ("2002:a9fe:a9fe::", "metadata"),
    ("2002:c0a8:101::1", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "tunnel"),  # Teredo
    ("64:ff9b:1::a00:1", "tunnel"),  # local-use NAT64
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1"]


@pytest.mark.parametrize(("literal", "why"), REFUSED)
def test_addresses_that_are_not_public_are_refused_by_default(literal: str, why: str) -> None:
    reason = address_refusal(ip_address(literal))
    assert reason is not None and why in reason


@pytest.mark.parametrize("literal", PUBLIC)
def test_public_addresses_are_allowed(literal: str) -> None:
    assert address_refusal(ip_address(literal)) is None


def allowed(literal: str, **flags: bool) -> bool:
    return address_refusal(ip_address(literal), **flags) is None


def test_allow_loopback_opens_loopback_only() -> None:
    for literal in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "2002:7f00:1::1"):
        assert allowed(literal, allow_loopback=True), literal
    for literal in ("0.0.0.0", "::", "10.0.0.1", "169.254.169.254", "fe80::1", "224.0.0.1"):
        assert not allowed(literal, allow_loopback=True), literal


def test_allow_private_networks_opens_them_but_never_metadata_or_link_local() -> None:
    for literal in ("10.0.0.1", "172.20.0.1", "192.168.9.9", "100.64.0.1", "fd12::1",
                    "::ffff:192.168.0.1", "64:ff9b::a00:1"):
        assert allowed(literal, allow_private_networks=True), literal
    everything = {"allow_loopback": True, "allow_private_networks": True}
    for literal in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:a9fe:a9fe",
                    "169.254.1.1", "fe80::1", "ff02::1", "0.0.0.0", "240.0.0.1"):
        assert not allowed(literal, **everything), literal
    assert not allowed("127.0.0.1", allow_private_networks=True)


# Spellings of an address that libc's inet_aton reads, though they are not dotted decimal.
SPELLINGS = [
    ("2130706433", "127.0.0.1"),  # decimal
    ("017700000001", "127.0.0.1"),  # octal
    ("0x7f000001", "127.0.0.1"),  # hex
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0X7F.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # short forms: the last part fills the bytes left
    ("127.0.1", "127.0.0.1"),
    ("127.000.000.001", "127.0.0.1"),
    ("2852039166", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("10.1", "10.0.0.1"),
    ("0", "0.0.0.0"),
    ("134744072", "8.8.8.8"),  # public, and refused all the same: ambiguous is refused
]


@pytest.mark.parametrize(("spelling", "meaning"), SPELLINGS)
def test_numeric_spellings_are_read_as_libc_reads_them_and_refused(
    spelling: str, meaning: str
) -> None:
    assert libc_ipv4(spelling) == IPv4Address(meaning)
    assert libc_ipv4(spelling) == IPv4Address(socket.inet_aton(spelling))  # libc itself
    with pytest.raises(ImageFetchRefusedError, match=f"libc reads it as {meaning}"):
        canonical_host(spelling)
    # Even a policy that opens loopback and private networks takes none of them.
    lenient = ImageSourcePolicy(allow_loopback=True, allow_private_networks=True)
    with pytest.raises(ImageFetchRefusedError, match="dotted decimal"):
        check_url(f"http://{spelling}/a.png", lenient)


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.0.0.1", "08.1.1.1", "images.123",
                                  "127.0.0.1.", "0x1.0x100.1.1"])
def test_hosts_ending_in_a_number_that_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(ImageFetchRefusedError, match="dotted decimal"):
        canonical_host(host)


def test_dotted_decimal_and_names_are_read_plainly() -> None:
    assert canonical_host("127.0.0.1") == IPv4Address("127.0.0.1")
    assert canonical_host("::ffff:7f00:1") == ip_address("::ffff:127.0.0.1")
    assert canonical_host("Images.Example.COM.") == "images.example.com"
    assert canonical_host("bücher.example") == "xn--bcher-kva.example"
    assert canonical_host("0x7f.example") == "0x7f.example"  # its last label is no number
    for bad in ("", "a..b", "-a.example", "a_b!.example", "x" * 64 + ".example", "fe80::1%eth0"):
        with pytest.raises(ImageFetchRefusedError):
            canonical_host(bad)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.lists(st.sampled_from("dox"), min_size=4,
                                                               max_size=4))
def test_any_spelling_of_any_address_is_read_as_libc_reads_it(
    value: int, num_parts: int, bases: list[str]
) -> None:
    # Split the address as inet_aton reads it back: leading bytes, then the rest in one part.
    octets = IPv4Address(value).packed
    leading = list(octets[: num_parts - 1])
    last = int.from_bytes(octets[num_parts - 1 :], "big")
    spell: dict[str, Callable[[int], str]] = {"d": str, "o": lambda n: f"0{n:o}", "x": hex}
    spelling = ".".join(spell[base](n) for base, n in zip(bases, [*leading, last], strict=False))
    assert libc_ipv4(spelling) == IPv4Address(value) == IPv4Address(socket.inet_aton(spelling))
    if spelling != str(IPv4Address(value)):
        with pytest.raises(ImageFetchRefusedError):
            canonical_host(spelling)
