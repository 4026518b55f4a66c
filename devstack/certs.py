"""Certificates for devstack's kube-apiserver, made the way envtest makes them.

Three small CAs: one signs the serving certificate, one signs client certificates (the admin
user is CN ``default``, O ``system:masters``), and an RSA key pair signs service-account tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    def b64(self) -> tuple[str, str]:
        return (
            base64.b64encode(self.cert.read_bytes()).decode(),
            base64.b64encode(self.key.read_bytes()).decode(),
        )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Pair(cert_path, key_path)


class _CA:
    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, name: x509.Name, *, server: bool, sans: list[x509.GeneralName] | None = None
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


@dataclass(frozen=True)
class Certs:
    serving_ca: Path
    serving: Pair
    client_ca: Path
    admin: Pair
    sa_public: Path
    sa_private: Path


def generate(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    serving_ca, client_ca = _CA("devstack-serving-ca"), _CA("devstack-client-ca")
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.DNSName("kubernetes.default.svc"),
    ]
    serving = _write(folder, "apiserver", *serving_ca.issue(_name("kube-apiserver"), server=True, sans=sans))
    admin = _write(folder, "admin", *client_ca.issue(_name("default", "system:masters"), server=False))
    ca_paths = []
    for stem, ca in (("serving-ca", serving_ca), ("client-ca", client_ca)):
        pair = _write(folder, stem, ca.cert, ca.key)
        ca_paths.append(pair.cert)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private, sa_public = folder / "sa.key", folder / "sa.pub"
    sa_private.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    sa_private.chmod(0o600)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Certs(ca_paths[0], serving, ca_paths[1], admin, sa_public, sa_private)


def serving_pair(folder: Path, stem: str, cn: str, ips: list[str]) -> Pair:
    """A serving certificate for one component's own endpoint, signed by a CA of its own (its
    clients do not check it: kube-apiserver verifies no kubelet certificate unless told a CA)."""
    folder.mkdir(parents=True, exist_ok=True)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return _write(folder, stem, *_CA(f"{cn}-ca").issue(_name(cn), server=True, sans=sans))
