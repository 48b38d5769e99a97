"""The policy's own checks, its host allowlist, and `check_url`: what is refused before any
socket exists. Hosts here are values only; the guard in conftest.py fails any test that
connects or looks a name up, and `no_socket_calls` shows none was made."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from orchestrator.image_fetch import (
    ImageFetchError,
    ImageFetchRefusedError,
    ImageSourcePolicy,
    read_image_source,
)
from orchestrator.image_fetch.address_policy import IPAddress
from orchestrator.image_fetch.policy import HostPattern
from orchestrator.image_fetch.url_fetch import check_url, resolve_addresses
from orchestrator.image_ref import ImageURL
from worker.errors import ImageError, JobError


@pytest.fixture(autouse=True)
def no_socket_calls(socket_calls: list[tuple[str, object]]) -> Any:
    yield
    assert socket_calls == []


def test_allowlist_entries_match_hosts_ports_and_subdomains() -> None:
    policy = ImageSourcePolicy(
        allowed_hosts=("images.example.com", "*.cdn.example:443", "127.0.0.1:8080", "[::1]:99")
    )
    assert policy.allows_host("images.example.com", 80)
    assert policy.allows_host("images.example.com", 8443)  # no port: any port
    assert not policy.allows_host("evil-images.example.com", 80)
    assert not policy.allows_host("images.example.com.evil", 80)
    assert policy.allows_host("a.b.cdn.example", 443)
    assert not policy.allows_host("a.cdn.example", 80)
    assert not policy.allows_host("cdn.example", 443)  # "*." is its subdomains, not itself
    assert not policy.allows_host("xcdn.example", 443)
    assert policy.allows_host("127.0.0.1", 8080)
    assert not policy.allows_host("127.0.0.1", 8081)
    assert policy.allows_host("::1", 99)
    assert ImageSourcePolicy().allows_host("anything.example", 1)  # no list: any host
    assert not ImageSourcePolicy(allowed_hosts=()).allows_host("anything.example", 1)
    parsed = HostPattern.parse("IMAGES.Example.com.")
    assert parsed == HostPattern("images.example.com", None, False)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"allowed_hosts": "images.example.com"}, "must be a tuple of str or None, got str"),
        ({"allowed_hosts": ("",)}, "non-empty str"),
        ({"allowed_hosts": ("a.example:0",)}, "port must be 1 to 65535"),
        ({"allowed_hosts": ("a.example:http",)}, "port must be 1 to 65535"),
        ({"allowed_hosts": ("[::1",)}, "[addr]:port"),
        ({"allowed_hosts": ("*.10.0.0.1",)}, "'*.' may only lead a host name"),
        ({"allowed_hosts": ("0x7f.1",)}, "dotted decimal"),
        ({"image_root": "images"}, "image_root must be an absolute path"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"total_timeout_s": True}, "total_timeout_s must be a positive number"),
        ({"max_bytes": 0}, "max_bytes must be an int >= 1"),
        ({"max_redirects": -1}, "max_redirects must be an int >= 0"),
        ({"allowed_content_types": ("Image/PNG",)}, "lower-case media types"),
        ({"allowed_content_types": "image/png"}, "lower-case media types"),
    ],
)
def test_a_bad_policy_is_refused_when_built(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError) as caught:
        ImageSourcePolicy(**changes)
    assert words in str(caught.value)


LENIENT = ImageSourcePolicy(allow_loopback=True, allow_private_networks=True)

REFUSED_URLS = [
    ("ftp://images.example/a.png", LENIENT, "only http and https"),
    ("file:///etc/passwd", LENIENT, "only http and https"),
    ("gopher://127.0.0.1:70/", LENIENT, "only http and https"),
    ("http://images.example/a.png", ImageSourcePolicy(allow_http=False), "https URLs only"),
    ("http://user:pw@images.example/a.png", LENIENT, "credentials"),
    ("http://images.example@127.0.0.1/a.png", LENIENT, "credentials"),
    ("http:///a.png", LENIENT, "has no host"),
    ("http://images.example:99999/a.png", LENIENT, "invalid port"),
    ("http://images.example/a b.png", LENIENT, "whitespace"),
    ("http://images.example/a.png\r\nX-Injected: 1", LENIENT, "whitespace"),
    ("http://127.0.0.1\\@images.example/", LENIENT, "backslash"),
    ("http://images.example/" + "a" * 9000, LENIENT, "over the limit of 8,192"),
    # A literal address is judged here, before anything is resolved or connected.
    ("http://10.0.0.1/a.png", ImageSourcePolicy(), "private network"),
    ("http://169.254.169.254/latest/meta-data/", LENIENT, "cloud metadata"),
    ("http://[fd00:ec2::254]/", LENIENT, "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", LENIENT, "cloud metadata"),
    ("http://[::ffff:127.0.0.1]:8080/", ImageSourcePolicy(), "loopback"),
    ("http://[fe80::1%25eth0]/", LENIENT, "zone"),
    ("http://0.0.0.0:8080/", LENIENT, "not a host address"),
    ("https://2852039166/", LENIENT, "dotted decimal"),
    ("http://images.example/a.png", ImageSourcePolicy(allowed_hosts=("cdn.example",)),
     "not on this server's list of allowed image hosts"),
    ("http://images.example:8080/", ImageSourcePolicy(allowed_hosts=("images.example:80",)),
     "port 8080 is not on"),
]


@pytest.mark.parametrize(("url", "policy", "words"), REFUSED_URLS)
def test_check_url_refuses_before_any_socket(
    url: str, policy: ImageSourcePolicy, words: str
) -> None:
    with pytest.raises(ImageFetchRefusedError) as caught:
        check_url(url, policy)
    assert words in str(caught.value)
    assert isinstance(caught.value, ImageError | JobError)  # the job's fault: not retried
    assert len(str(caught.value)) < 600  # a hostile URL is shown cut short


def test_check_url_reads_the_target() -> None:
    target = check_url("HTTPS://Images.Example:8443/a dir?x=ü#frag".replace(" ", "%20"),
                       ImageSourcePolicy())
    assert (target.scheme, target.host, target.port, target.address) == (
        "https", "images.example", 8443, None,
    )
    assert target.request_target == "/a%20dir?x=%C3%BC"
    literal = check_url("http://[::1]/", ImageSourcePolicy(allow_loopback=True))
    assert (literal.host, literal.port, literal.address) == ("::1", 80, ip_address("::1"))


def resolver(*literals: str) -> Any:
    """A DNS stand-in (the fetch's declared seam): every name resolves to `literals`."""

    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ip_address(literal) for literal in literals]

    return resolve


def test_every_resolved_address_is_checked_and_one_refused_refuses_all() -> None:
    target = check_url("http://images.example/a.png", ImageSourcePolicy())
    assert resolve_addresses(target, ImageSourcePolicy(), resolver("8.8.8.8", "1.1.1.1")) == (
        ip_address("8.8.8.8"),
        ip_address("1.1.1.1"),
    )
    for rebound in ("10.0.0.1", "::ffff:169.254.169.254", "127.0.0.1"):
        with pytest.raises(ImageFetchRefusedError) as caught:
            resolve_addresses(target, ImageSourcePolicy(), resolver("8.8.8.8", rebound))
        assert f"resolves to {ip_address(rebound)}" in str(caught.value)
    with pytest.raises(ImageFetchError, match="resolves to no address"):
        resolve_addresses(target, ImageSourcePolicy(), resolver())


def test_a_source_that_is_no_image_input_is_refused() -> None:
    assert read_image_source(b"\x89PNG", ImageSourcePolicy()) == b"\x89PNG"
    with pytest.raises(ImageFetchRefusedError, match="got str"):
        read_image_source("http://images.example/a.png", ImageSourcePolicy())  # type: ignore[arg-type]
    with pytest.raises(ImageFetchRefusedError, match="must be a str, got int"):
        read_image_source(ImageURL(7), ImageSourcePolicy())  # type: ignore[arg-type]
