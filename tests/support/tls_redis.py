"""A redis-server that only speaks TLS and only lets in an ACL user with a password.

The tests make their own CA, a server certificate for 127.0.0.1 and localhost, and a client
certificate, with the `cryptography` package, into a directory of the test's. The server's
plain TCP port is off (`port 0`), the `default` user is off, and the password goes in a config
file only this user may read, never on the command line.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.private_redis import free_port
from orchestrator.redis_connection import RedisSettings

USER = "vlmq"
# What vlmq needs, and no more: keys and channels of any namespace, every command but the
# dangerous ones (FLUSHALL, CONFIG, KEYS, DEBUG, ...), except INFO, which the queue reads
# to check the server's version. The allocator copes without CONFIG GET.
LEAST_PRIVILEGE = "~* &* +@all -@dangerous +info"
_VALID = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # the CA that signed the server's and the client's certificates
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vlmq test CA")
    ca = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _builder(_name("127.0.0.1"), ca_name, server_key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        _builder(_name("vlmq test client"), ca_name, client_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    certificates = Certificates(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    for path, certificate in ((certificates.ca_file, ca), (certificates.server_cert, server),
                              (certificates.client_cert, client)):
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    for path, key in ((certificates.server_key, server_key),
                      (certificates.client_key, client_key)):
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return certificates


class TlsRedisServer:
    """`require_client_cert`: `tls-auth-clients yes` (True) or `optional` (False).
    `acl_rules`: what the user may do, in ACL SETUSER's words."""

    def __init__(
        self,
        directory: Path,
        certificates: Certificates,
        *,
        require_client_cert: bool = False,
        acl_rules: str = LEAST_PRIVILEGE,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; scripts/setup installs it")
        self.binary = binary
        self.directory = directory
        self.certificates = certificates
        self.require_client_cert = require_client_cert
        self.acl_rules = acl_rules
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a client is given: the user, no password."""
        return f"rediss://{USER}@127.0.0.1:{self.port}/0"

    @property
    def url_with_password(self) -> str:
        """What a careless operator would paste into a command line."""
        return f"rediss://{USER}:{self.password}@127.0.0.1:{self.port}/0"

    def settings(self, **overrides: Any) -> RedisSettings:
        """Settings that connect: the password, the CA, and the client certificate."""
        values: dict[str, Any] = {
            "password": self.password,
            "ca_file": str(self.certificates.ca_file),
            "cert_file": str(self.certificates.client_cert),
            "key_file": str(self.certificates.client_key),
        }
        values.update(overrides)
        return RedisSettings(values.pop("url", self.url), **values)

    def client(self) -> redis.Redis:
        return self.settings().sync_client(socket_timeout=5.0)

    def start(self) -> None:
        config = self.directory / "tls-redis.conf"
        log_file = self.directory / "tls-redis.log"
        config.touch(mode=0o600)
        config.write_text(
            "\n".join([
                "port 0",
                f"tls-port {self.port}",
                "bind 127.0.0.1",
                f"tls-cert-file {self.certificates.server_cert}",
                f"tls-key-file {self.certificates.server_key}",
                f"tls-ca-cert-file {self.certificates.ca_file}",
                f"tls-auth-clients {'yes' if self.require_client_cert else 'optional'}",
                "user default off",
                f"user {USER} on >{self.password} {self.acl_rules}",
                f"dir {self.directory}",
                f"logfile {log_file}",
                'save ""',
                "appendonly no",
                "maxmemory-policy noeviction",
                "",
            ])
        )
        self._process = subprocess.Popen(
            [self.binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.02)
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        self.stop()
        raise RuntimeError(
            f"redis-server with TLS did not answer on port {self.port} (is it built with "
            f"TLS?); its log:\n{log[-2000:]}"
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
