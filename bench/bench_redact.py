"""Redaction and redemption overhead, measured side by side in one run.

1. Redaction throughput on ≈1 MB of mixed text (prose, JSON, log lines,
   base64 blobs) with 1, 10 and 50 secrets: a plain copy, the exact forms
   only (``variants=False``, the redactor before variants), the full
   redactor (forms, variants, near-copies), the full redactor streamed in
   4 KiB chunks, and the locked vault's fingerprint index.
1b. Per-token cost of the streaming redactor (model tokens of ≈4 characters),
   unlocked and locked.
2. One brokered call on a 64 KiB response (scope checks, atomic use count,
   injection, streaming redaction, audit row) against the same request made
   with plain httpx, both through an in-process transport so the network is
   excluded. The target: overhead p50 < 1 ms.
3. Audit log append rate with and without secret values to redact.

    .venv/bin/python bench/bench_redact.py      (or: .venv/bin/python -m bench bench_redact)
"""

from __future__ import annotations

import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from vault.audit import AuditLog
from vault.broker import Broker, HttpCall
from vault.fingerprints import SecretFingerprints, WithholdingRedactor
from vault.grants import CapabilityGrant, GrantStore, header_injection
from vault.redact import Redactor, StreamRedactor

KIB = 1024
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


class _Source:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    def names(self) -> list[str]:
        return sorted(self.values)

    def get(self, name: str) -> bytearray:
        return bytearray(self.values[name])


def _timeit(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _text(size: int, secret: str, occurrences: int) -> str:
    filler = secrets.token_urlsafe(size)[:size]
    step = max(size // (occurrences + 1), 1)
    parts = [filler[i : i + step] for i in range(0, size, step)]
    return secret.join(parts[: occurrences + 1]) + "".join(parts[occurrences + 1 :])


_WORDS = (
    "the of and to in is for on with as by this that from config deploy key token server "
    "request response error retry region timeout user password value secret cache build"
).split()


def _mixed_text(size: int, secret: str, occurrences: int, seed: int = 7) -> str:
    """Prose, JSON, log lines and base64 blobs, with ``secret`` spread through it."""
    rng = random.Random(seed)
    parts: list[str] = []
    n = 0
    while n < size:
        kind = rng.random()
        if kind < 0.5:
            piece = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30))) + ".\n"
        elif kind < 0.7:
            piece = f'{{"id": "{rng.getrandbits(64):016x}", "status": {rng.randint(200, 504)}}}\n'
        elif kind < 0.9:
            piece = f"2026-12-04T05:{rng.randint(0, 59):02d} INFO req={rng.getrandbits(48):x}\n"
        else:
            piece = secrets.token_urlsafe(rng.randint(40, 200)) + "\n"
        parts.append(piece)
        n += len(piece)
    step = max(len(parts) // (occurrences + 1), 1)
    for i in range(1, occurrences + 1):
        parts.insert(i * step, f"API_KEY={secret}\n")
    return "".join(parts)[: size + occurrences * (len(secret) + 9)]


def _streamed(make: Callable[[], StreamRedactor], chunks: list[str]) -> str:
    s = make()
    return "".join([s.feed(c) for c in chunks]) + s.finish()


def redaction_table() -> list[str]:
    rows = [
        "| secrets | plain copy MB/s | exact forms MB/s | forms + variants (new) MB/s "
        "| new, streamed 4 KiB MB/s | locked index MB/s | new / exact time |",
        "|---|---|---|---|---|---|---|",
    ]
    size = 1024 * KIB
    for n_secrets in (1, 10, 50):
        values = {f"S{i}": "sk-" + secrets.token_urlsafe(30) for i in range(n_secrets)}
        text = _mixed_text(size, values["S0"], 4)
        old = Redactor(values, variants=False)
        new = Redactor(values)
        locked = SecretFingerprints.build(values.values(), generation=1).redactor()
        assert values["S0"] not in new.redact(text)[0]
        assert values["S0"] not in locked.redact(text)[0]
        chunks = [text[i : i + 4 * KIB] for i in range(0, len(text), 4 * KIB)]

        def copy(t: str = text) -> str:
            return "".join([t[: len(t) // 2], t[len(t) // 2 :]])

        timings: dict[str, list[float]] = {k: [] for k in ("copy", "old", "new", "str", "lock")}
        fns: dict[str, Callable[[], object]] = {
            "copy": copy,
            "old": lambda r=old, t=text: r.redact(t),
            "new": lambda r=new, t=text: r.redact(t),
            "str": lambda r=new, cs=chunks: _streamed(r.stream, cs),
            "lock": lambda r=locked, t=text: r.redact(t),
        }
        for _ in range(3):  # interleaved rounds: every variant sees the same load
            for key, fn in fns.items():
                timings[key] += _timeit(fn, 1)
        t = {k: statistics.median(v) for k, v in timings.items()}
        mb = len(text) / 1e6
        rows.append(
            f"| {n_secrets} | {mb / t['copy']:,.0f} | {mb / t['old']:,.1f} | {mb / t['new']:,.1f} "
            f"| {mb / t['str']:,.1f} | {mb / t['lock']:,.1f} | {t['new'] / t['old']:,.1f}x |"
        )
    return rows


def token_table() -> list[str]:
    """Per-token cost of the stream redactor on ≈4-character model tokens."""
    rows = [
        "| secrets | stream | tokens | µs/token (p50 of 3) |",
        "|---|---|---|---|",
    ]
    for n_secrets in (1, 10, 50):
        values = {f"S{i}": "sk-" + secrets.token_urlsafe(30) for i in range(n_secrets)}
        text = _mixed_text(64 * KIB, values["S0"], 2)
        tokens = [text[i : i + 4] for i in range(0, len(text), 4)]
        makers: dict[str, Callable[[], StreamRedactor]] = {
            "unlocked (forms + variants)": Redactor(values).stream,
            "locked (fingerprints)": WithholdingRedactor(
                SecretFingerprints.build(values.values(), generation=1)
            ).stream,
        }
        for label, make in makers.items():
            t = statistics.median(_timeit(lambda m=make, ts=tokens: _streamed(m, ts), 3))
            us = t / len(tokens) * 1e6
            rows.append(f"| {n_secrets} | {label} | {len(tokens):,} | {us:.1f} |")
    return rows


def call_table(tmp: Path) -> list[str]:
    secret = b"sk-bench-" + secrets.token_urlsafe(32).encode()
    body = _text(64 * KIB, secret.decode(), 2).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/plain"})

    transport = httpx.MockTransport(handler)
    db = tmp / "keyless.db"
    broker = Broker(
        _Source({"KEY": secret}),
        GrantStore(db),
        AuditLog(db),
        transport=transport,
        resolver=lambda host, port: ["93.184.216.34"],
    )
    grant = CapabilityGrant(
        secret_name="KEY",
        injection=header_injection("Authorization: Bearer {}"),
        methods=["GET"],
        host="api.example.com",
        path_pattern="/v1/*",
        expires_at=NOW + timedelta(days=1),
        session_id="bench",
        approved_by="bench",
        approved_at=NOW,
    )
    handle = broker.grant(grant, now=NOW).handle
    call = HttpCall(url="https://api.example.com/v1/items?page=2")
    plain = httpx.Client(transport=transport)
    repeats = 300

    def brokered() -> None:
        response = broker.call(handle, call, session_id="bench", now=NOW)
        assert response.redacted == ["KEY"]

    def direct() -> None:
        r = plain.get(
            "https://api.example.com/v1/items?page=2",
            headers={"Authorization": "Bearer " + secret.decode()},
        )
        assert len(r.content) == len(body)

    # Interleave so both see the same machine load.
    t_b: list[float] = []
    t_d: list[float] = []
    for _ in range(repeats // 50):
        t_b += _timeit(brokered, 50)
        t_d += _timeit(direct, 50)
    p50_b, p50_d = statistics.median(t_b), statistics.median(t_d)
    p90_b = statistics.quantiles(t_b, n=10)[-1]
    p90_d = statistics.quantiles(t_d, n=10)[-1]
    broker.close()
    plain.close()
    return [
        "| 64 KiB response, network excluded | p50 ms | p90 ms |",
        "|---|---|---|",
        f"| plain httpx (secret in header, nothing checked) | {p50_d * 1e3:.3f} "
        f"| {p90_d * 1e3:.3f} |",
        f"| broker.call (checks, use count, injection, redaction, audit) | {p50_b * 1e3:.3f} "
        f"| {p90_b * 1e3:.3f} |",
        f"| overhead (p50 difference) | {(p50_b - p50_d) * 1e3:.3f} | |",
        f"| ratio broker / plain | {p50_b / p50_d:.2f}x | |",
    ]


def audit_table(tmp: Path) -> list[str]:
    log = AuditLog(tmp / "audit.db")
    value = secrets.token_bytes(32)
    details = {"url": "https://api.example.com/v1/items", "status": 200, "redacted": ["KEY"]}
    n = 500
    t0 = time.perf_counter()
    for _ in range(n):
        log.record("redeem", session_id="bench", details=details)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        log.record("redeem", session_id="bench", details=details, secret_values=[value])
    redacting = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = log.verify()
    verify = time.perf_counter() - t0
    assert check.ok
    return [
        "| audit log | rows/s | µs/row |",
        "|---|---|---|",
        f"| record() | {n / plain:,.0f} | {plain / n * 1e6:,.0f} |",
        f"| record() with one secret value to redact | {n / redacting:,.0f} "
        f"| {redacting / n * 1e6:,.0f} |",
        f"| verify() over {check.n_entries} rows | {check.n_entries / verify:,.0f} "
        f"| {verify / check.n_entries * 1e6:,.1f} |",
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("\n".join(redaction_table()))
        print()
        print("\n".join(token_table()))
        print()
        print("\n".join(call_table(tmp)))
        print()
        print("\n".join(audit_table(tmp)))


if __name__ == "__main__":
    main()
