"""vlmq against a Redis that speaks only TLS and lets in only an ACL user with a password,
who may run no dangerous command (tests/support/tls_redis.py: LEAST_PRIVILEGE).

One such redis-server (client certificates optional) serves the module; the test that needs
client certificates required starts its own. Each test that expects a failure also checks it
comes as a clear error at once rather than a hang: every connection has a socket timeout, and
the pytest timeout below only catches a regression to hanging.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import redis

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.handle import get_or_start_allocator
from orchestrator.allocator.id_ledger import IdLedger
from orchestrator.private_redis import free_port
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import JobState
from orchestrator.redis_connection import PASSWORD_ENV, RedisSettings
from orchestrator.redis_keys import RedisKeys
from tests.orchestrator.allocator.test_on_ray import assert_no_shared_ids, collect, run_workers
from tests.support.queue_runners import ScriptedRunner
from tests.support.tls_redis import Certificates, TlsRedisServer, make_certificates
from worker.errors import AllocatorStateUnavailableError

QUEUE = "secure"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(tmp_path_factory.mktemp("tls-redis"), certificates)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"tls-{uuid.uuid4().hex[:8]}"


def queue_config(settings: str | RedisSettings, namespace: str) -> QueueConfig:
    return QueueConfig(settings, QUEUE, namespace, lease_s=3.0, renew_every_s=0.5,
                       reap_every_s=0.2, idle_wait_s=0.2, drain_grace_s=5.0)


def test_jobs_complete_over_tls_and_the_logs_never_show_the_password(
    tls_redis: TlsRedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # redis-py's own debug lines included
    # The server as an operator might start it: the password inside the URL (from
    # $VLMQ_REDIS_URL), with a client certificate; the client with the CA and password only.
    served = tls_redis.settings(url=tls_redis.url_with_password, password=None)
    server = ServerThread(queue_config(served, namespace), ScriptedRunner(capacity=4))
    server.start()
    try:
        with Client(tls_redis.settings(cert_file=None, key_file=None),
                    namespace=namespace) as client:
            receipt = client.submit(JobSpec("one", QUEUE, "hello"))
            assert receipt.created
            result = client.wait("one", timeout_s=60)
            assert (result.state, result.text) == (JobState.SUCCEEDED, "olleh")
            batch = client.new_batch()
            batch.submit_many(JobSpec(f"b{i}", QUEUE, f"line {i}") for i in range(5))
            assert sorted(r.text or "" for r in batch.results()) == sorted(
                f"{i} enil" for i in range(5)
            )
    finally:
        server.stop()
    assert served.masked_url in caplog.text
    assert tls_redis.password not in caplog.text


def test_the_allocator_actor_hands_out_ranges_over_tls(
    ray_cluster: None, tls_redis: TlsRedisServer, namespace: str
) -> None:
    # The settings reach the actor through Ray; the certificate paths exist on this node.
    config = AllocatorConfig(tls_redis.settings(), namespace=namespace, chunk_size=2048,
                             lease_size=256, sync_every=16)
    try:
        _, handouts = collect(run_workers(config, num_workers=2))
        assert assert_no_shared_ids(handouts) >= 2 * 120
    finally:
        ray.kill(get_or_start_allocator(config), no_restart=True)
    stored = tls_redis.client().hgetall(RedisKeys(namespace).allocator_state)
    assert int(stored[b"hwm"]) >= max(r.end for _, _, r in handouts)


def unreachable(tls_redis: TlsRedisServer, case: str) -> tuple[RedisSettings, type[Exception]]:
    """Settings that must not get in, and the error they must get."""
    port = tls_redis.port
    ca = str(tls_redis.certificates.ca_file)
    cases: dict[str, tuple[RedisSettings, type[Exception]]] = {
        "no password": (tls_redis.settings(password=None), redis.AuthenticationError),
        "no user, no password": (
            RedisSettings(f"rediss://127.0.0.1:{port}/0", ca_file=ca), redis.AuthenticationError
        ),
        "wrong password": (tls_redis.settings(password="wrong"), redis.AuthenticationError),
        "no CA": (tls_redis.settings(ca_file=None), redis.ConnectionError),
        "plain text": (
            RedisSettings(f"redis://vlmq@127.0.0.1:{port}/0", password=tls_redis.password),
            redis.ConnectionError,
        ),
    }
    return cases[case]


HINTS = {
    "no password": "--redis-password-file",
    "no user, no password": "--redis-password-file",
    "wrong password": "--redis-password-file",
    "no CA": "--redis-ca",
    "plain text": "rediss://",
}


@pytest.mark.parametrize("case", list(HINTS))
def test_a_client_that_may_not_get_in_fails_at_once_with_a_clear_error(
    tls_redis: TlsRedisServer, namespace: str, case: str
) -> None:
    settings, expected = unreachable(tls_redis, case)
    with pytest.raises(expected) as failure:
        Client(settings, namespace=namespace)
    said = settings.describe_failure(failure.value)
    assert HINTS[case] in said
    assert settings.masked_url in said


def test_a_queue_server_with_a_wrong_password_stops_instead_of_waiting(
    tls_redis: TlsRedisServer, namespace: str
) -> None:
    # A Redis that is not up yet is waited for; a wrong password will not mend with time.
    settings = tls_redis.settings(password="wrong")
    server = ServerThread(queue_config(settings, namespace), ScriptedRunner())
    with pytest.raises(redis.AuthenticationError, match="--redis-password-file") as failure:
        server.start()
    assert settings.masked_url in str(failure.value)


def test_a_server_that_requires_client_certificates(
    tmp_path: Path, certificates: Certificates, namespace: str
) -> None:
    strict = TlsRedisServer(tmp_path, certificates, require_client_cert=True)
    strict.start()
    try:
        without = strict.settings(cert_file=None, key_file=None)
        with pytest.raises(redis.ConnectionError) as failure:
            Client(without, namespace=namespace)
        assert "--redis-cert" in without.describe_failure(failure.value)
        with Client(strict.settings(), namespace=namespace) as client:
            assert client.queue_status(QUEUE).unfinished == 0
    finally:
        strict.stop()


def test_an_allocator_outage_names_the_masked_url(certificates: Certificates) -> None:
    secret = uuid.uuid4().hex
    settings = RedisSettings(f"rediss://vlmq:{secret}@127.0.0.1:{free_port()}/0",
                             ca_file=str(certificates.ca_file))
    ledger = IdLedger(AllocatorConfig(settings, redis_retry_seconds=0.1))
    with pytest.raises(AllocatorStateUnavailableError) as failure:
        ledger.reserve(1)
    assert settings.masked_url in str(failure.value)
    assert secret not in str(failure.value)


def vlmq_status(tls_redis: TlsRedisServer, *args: str, **env: str) -> Any:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_REDIS")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", "--queue", QUEUE, *args],
        capture_output=True, text=True, timeout=60, env={**environ, **env}, check=False,
    )


def test_the_cli_gets_in_with_the_password_from_the_environment(
    tls_redis: TlsRedisServer, namespace: str
) -> None:
    ca = str(tls_redis.certificates.ca_file)
    done = vlmq_status(tls_redis, "--namespace", namespace, "--redis-url", tls_redis.url,
                       "--redis-ca", ca, **{PASSWORD_ENV: tls_redis.password})
    assert done.returncode == 0, done.stderr
    assert f"queue {QUEUE}" in done.stdout
    refused = vlmq_status(tls_redis, "--redis-url", tls_redis.url_with_password,
                          "--redis-ca", ca)
    assert refused.returncode == 2
    assert "process listings" in refused.stderr
    assert tls_redis.password not in refused.stdout + refused.stderr
