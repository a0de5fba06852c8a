"""The egress proxy's per-session CA: what it may sign, for how long, and its key type."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.host.egress.ca import CA_LIFETIME, mint_ca


def test_the_session_ca_is_p256_may_sign_only_leaves_and_is_short_lived() -> None:
    now = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)
    ca = mint_ca(now=now)
    # P-256: each intercepted handshake signs with it, and minting takes microseconds.
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert ca.cert.not_valid_after_utc == now + CA_LIFETIME
    assert ca.cert.not_valid_before_utc == now - dt.timedelta(minutes=1)
    assert "PRIVATE" not in repr(ca) and b"BEGIN CERTIFICATE" in ca.cert_pem
    assert mint_ca(now=now).cert.serial_number != ca.cert.serial_number
