"""URL fetches end to end, against HTTP servers on 127.0.0.1 only (the guard in conftest.py
fails any test that reaches further): refused by default, fetched when loopback is allowed,
redirects, caps, content types, status codes and timeouts."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from orchestrator.image_fetch import (
    ImageFetchError,
    ImageFetchRefusedError,
    ImageFetchTransientError,
    ImageSourcePolicy,
    read_image_source,
)
from orchestrator.image_fetch.address_policy import IPAddress
from orchestrator.image_fetch.url_fetch import fetch_url
from orchestrator.image_ref import ImageURL
from tests.support.image_server import (
    ImageServer,
    body,
    hang,
    image_server,
    redirect,
    stream,
    trickle,
)
from tests.support.pipeline_fixtures import IMAGES
from tests.support.tls_redis import make_certificates
from worker.errors import JobError

PNG = IMAGES[0]
LOOPBACK = ImageSourcePolicy(allow_loopback=True)
MiB = 1 << 20


@pytest.fixture
def server() -> Any:
    with image_server({"/a.png": body(PNG)}) as running:
        yield running


def connects(socket_calls: list[tuple[str, object]]) -> list[object]:
    return [address for event, address in socket_calls if event == "socket.connect"]


def test_loopback_is_refused_by_default_without_a_connection(
    server: ImageServer, socket_calls: list[tuple[str, object]]
) -> None:
    with pytest.raises(ImageFetchRefusedError, match=r"host 127\.0\.0\.1 is loopback") as caught:
        read_image_source(ImageURL(server.url("/a.png")), ImageSourcePolicy())
    assert isinstance(caught.value, JobError)
    assert server.requests == []
    assert socket_calls == []


def test_loopback_is_fetched_when_allowed(
    server: ImageServer, socket_calls: list[tuple[str, object]]
) -> None:
    assert read_image_source(ImageURL(server.url("/a.png?size=big")), LOOPBACK) == PNG
    assert server.paths_seen() == ["/a.png?size=big"]
    assert server.requests[0].host == f"127.0.0.1:{server.port}"
    assert connects(socket_calls) == [("127.0.0.1", server.port)]


def test_a_name_connects_to_the_address_it_was_checked_at_and_sends_its_own_host(
    server: ImageServer, socket_calls: list[tuple[str, object]]
) -> None:
    looked_up: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[IPAddress]:  # the DNS seam
        looked_up.append((host, port))
        return [ip_address("127.0.0.1")]

    policy = ImageSourcePolicy(allow_loopback=True, allowed_hosts=("*.example",))
    url = f"http://Images.Example:{server.port}/a.png"
    assert fetch_url(url, policy, resolve) == PNG
    assert looked_up == [("images.example", server.port)]
    assert server.requests[0].host == f"images.example:{server.port}"
    assert connects(socket_calls) == [("127.0.0.1", server.port)]
    assert not any(event == "socket.getaddrinfo" for event, _ in socket_calls)
    with pytest.raises(ImageFetchRefusedError, match="not on this server's list"):
        fetch_url(f"http://images.other:{server.port}/a.png", policy, resolve)
    with pytest.raises(ImageFetchRefusedError, match=r"resolves to 127\.0\.0\.1, which is loop"):
        fetch_url(url, ImageSourcePolicy(allowed_hosts=("*.example",)), resolve)
    assert len(server.requests) == 1


def test_a_redirect_to_a_loopback_port_that_is_not_allowed_is_refused() -> None:
    with image_server({"/a.png": body(PNG)}) as target, image_server() as first:
        first.routes["/r"] = redirect(target.url("/a.png"))
        policy = ImageSourcePolicy(allow_loopback=True, allowed_hosts=(f"127.0.0.1:{first.port}",))
        with pytest.raises(ImageFetchRefusedError) as caught:
            fetch_url(first.url("/r"), policy)
        assert f"host 127.0.0.1 on port {target.port} is not on" in str(caught.value)
        assert first.paths_seen() == ["/r"]
        assert target.requests == []
        # Allowed, the same redirect is followed.
        both = ImageSourcePolicy(
            allow_loopback=True,
            allowed_hosts=(f"127.0.0.1:{first.port}", f"127.0.0.1:{target.port}"),
        )
        assert fetch_url(first.url("/r"), both) == PNG
        assert target.paths_seen() == ["/a.png"]


def test_redirects_relative_and_by_every_status_are_followed_up_to_the_limit(
    server: ImageServer,
) -> None:
    for status in (301, 302, 303, 307, 308):
        server.routes[f"/s{status}"] = redirect("/a.png", status)
        assert fetch_url(server.url(f"/s{status}"), LOOPBACK) == PNG
    for hop in range(3):
        server.routes[f"/hop{hop}"] = redirect(f"/hop{hop + 1}")
    server.routes["/hop3"] = redirect("/a.png")
    assert fetch_url(server.url("/hop1"), LOOPBACK) == PNG  # three redirects: the default limit
    with pytest.raises(ImageFetchError, match="redirected more than 3 times"):
        fetch_url(server.url("/hop0"), LOOPBACK)
    server.routes["/nowhere"] = redirect("")
    with pytest.raises(ImageFetchError, match="without a Location"):
        fetch_url(server.url("/nowhere"), LOOPBACK)
    server.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ImageFetchRefusedError, match="cloud metadata"):
        fetch_url(server.url("/to-metadata"), LOOPBACK)


def test_a_reply_that_is_not_an_allowed_image_type_is_refused(server: ImageServer) -> None:
    server.routes["/page"] = body(b"<html></html>", "text/html; charset=utf-8")
    server.routes["/untyped"] = body(PNG, None)
    server.routes["/svg"] = body(b"<svg/>", "image/svg+xml")
    server.routes["/png-with-params"] = body(PNG, "Image/PNG; q=1")
    with pytest.raises(ImageFetchError, match="type 'text/html; charset=utf-8'"):
        fetch_url(server.url("/page"), LOOPBACK)
    with pytest.raises(ImageFetchError, match="no Content-Type"):
        fetch_url(server.url("/untyped"), LOOPBACK)
    with pytest.raises(ImageFetchError, match="image/svg"):
        fetch_url(server.url("/svg"), LOOPBACK)
    assert fetch_url(server.url("/png-with-params"), LOOPBACK) == PNG
    only_jpeg = ImageSourcePolicy(allow_loopback=True, allowed_content_types=("image/jpeg",))
    with pytest.raises(ImageFetchError, match="must be one of image/jpeg"):
        fetch_url(server.url("/a.png"), only_jpeg)


def test_a_body_over_the_cap_is_refused_while_streaming(server: ImageServer) -> None:
    total = 256 * MiB
    server.routes["/endless"] = stream("/endless", total)
    policy = ImageSourcePolicy(allow_loopback=True, max_bytes=1 * MiB)
    with pytest.raises(ImageFetchError, match="over the limit of 1,048,576 bytes"):
        fetch_url(server.url("/endless"), policy)
    assert server.finished["/endless"].wait(30)
    # The client hung up after the cap: the server could write only what socket buffers hold.
    assert server.bytes_sent["/endless"] < total // 4


def test_a_declared_length_over_the_cap_is_refused_before_reading(server: ImageServer) -> None:
    server.routes["/big"] = stream("/big", 4 * MiB, declared_length=4 * MiB)
    policy = ImageSourcePolicy(allow_loopback=True, max_bytes=MiB)
    with pytest.raises(ImageFetchError, match="is 4,194,304 bytes, over the limit of 1,048,576"):
        fetch_url(server.url("/big"), policy)


def test_a_body_of_exactly_the_cap_is_fetched(server: ImageServer) -> None:
    server.routes["/exact"] = stream("/exact", MiB)  # no Content-Length: read to the end
    data = fetch_url(server.url("/exact"), ImageSourcePolicy(allow_loopback=True, max_bytes=MiB))
    assert len(data) == MiB


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, ImageFetchError), (403, ImageFetchError), (410, ImageFetchError),
     (204, ImageFetchError), (500, ImageFetchTransientError), (503, ImageFetchTransientError),
     (429, ImageFetchTransientError), (408, ImageFetchTransientError)],
)
def test_http_errors_are_permanent_or_transient_by_status(
    server: ImageServer, status: int, kind: type[Exception]
) -> None:
    server.routes["/status"] = body(b"no", "text/plain", status=status)
    with pytest.raises(kind, match=f"answered HTTP {status}") as caught:
        fetch_url(server.url("/status"), LOOPBACK)
    # Permanent failures are the job's fault; transient ones are retried by the queue.
    assert isinstance(caught.value, JobError) == (kind is ImageFetchError)


def test_a_server_that_does_not_answer_times_out_as_transient(server: ImageServer) -> None:
    server.routes["/hang"] = hang()
    with pytest.raises(ImageFetchTransientError, match="timed out"):
        fetch_url(server.url("/hang"), ImageSourcePolicy(allow_loopback=True, timeout_s=0.2))


def test_a_trickling_server_is_cut_off_at_the_overall_deadline(server: ImageServer) -> None:
    server.routes["/trickle"] = trickle(0.02)  # each read is quick; the reply never ends
    policy = ImageSourcePolicy(allow_loopback=True, timeout_s=30, total_timeout_s=0.3)
    with pytest.raises(ImageFetchTransientError, match=r"took longer than 0\.3 s"):
        fetch_url(server.url("/trickle"), policy)


def test_a_closed_port_is_a_transient_failure() -> None:
    with image_server() as gone:
        url = gone.url("/a.png")
    with pytest.raises(ImageFetchTransientError, match="could not connect"):
        fetch_url(url, LOOPBACK)


def test_https_verifies_the_certificate_for_the_urls_host_at_the_pinned_address(
    tmp_path: Path, socket_calls: list[tuple[str, object]]
) -> None:
    certificates = make_certificates(tmp_path / "tls")  # for 127.0.0.1 and localhost
    tls = (certificates.server_cert, certificates.server_key)
    with image_server({"/a.png": body(PNG)}, tls=tls) as server:
        policy = ImageSourcePolicy(allow_loopback=True, tls_ca_file=str(certificates.ca_file))

        def resolve(host: str, port: int) -> list[IPAddress]:  # the DNS seam: any name here
            return [ip_address("127.0.0.1")]

        assert fetch_url(server.url("/a.png", host="localhost"), policy, resolve) == PNG
        assert server.requests[0].host == f"localhost:{server.port}"
        assert fetch_url(server.url("/a.png"), policy) == PNG  # the certificate names the IP too
        # The same server and address, by a name its certificate does not hold: refused.
        with pytest.raises(ImageFetchError, match=r"does not verify for images\.example"):
            fetch_url(server.url("/a.png", host="images.example"), policy, resolve)
        # Without our CA, the system's trust store does not know this server.
        with pytest.raises(ImageFetchError, match="does not verify"):
            fetch_url(server.url("/a.png"), ImageSourcePolicy(allow_loopback=True))
        assert len(server.requests) == 2
    assert {address for event, address in socket_calls if event == "socket.connect"} == {
        ("127.0.0.1", server.port)
    }
