"""A per-session certificate authority, minted in memory.

The sandbox trusts it (and only the sandbox); the proxy signs the leaf
certificates of intercepted hosts with it. The key is never written to disk
and the certificate lives a few hours at most.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long a session CA is valid; a session longer than this mints a new one.
CA_LIFETIME = dt.timedelta(hours=12)


@dataclass(frozen=True)
class SessionCA:
    """A CA key (in memory only) and its self-signed certificate.

    Attributes:
        key: The RSA private key; mitmproxy signs leaf certificates with it.
        cert: The CA certificate the sandbox trusts.
    """

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        """The certificate, PEM-encoded (what goes into the sandbox's CA bundle)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"SessionCA(subject={self.cert.subject.rfc4514_string()!r})"


def mint_ca(*, now: dt.datetime | None = None, lifetime: dt.timedelta = CA_LIFETIME) -> SessionCA:
    """Mint a fresh CA for one session.

    It may sign only end-entity server certificates (path length 0), and is
    valid from a minute before ``now`` (clock skew) for ``lifetime``.

    Args:
        now: The current time (a parameter so tests can fix it).
        lifetime: How long the certificate is valid.

    Returns:
        The CA.
    """
    at = now or dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Keyless session egress CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Keyless"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - dt.timedelta(minutes=1))
        .not_valid_after(at + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SessionCA(key=key, cert=cert)
