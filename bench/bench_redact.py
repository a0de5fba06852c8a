"""Redaction and redemption overhead, measured side by side in one run.

1. Redaction throughput against a plain copy of the same text (one shot and
   streamed in 4 KiB chunks), with one secret (≈10 patterns) and with eight.
2. One brokered call on a 64 KiB response (scope checks, atomic use count,
   injection, streaming redaction, audit row) against the same request made
   with plain httpx, both through an in-process transport so the network is
   excluded. The target: overhead p50 < 1 ms.
3. Audit log append rate with and without secret values to redact.

    .venv/bin/python bench/bench_redact.py      (or: .venv/bin/python -m bench bench_redact)
"""

from __future__ import annotations

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
from vault.grants import CapabilityGrant, GrantStore, header_injection
from vault.redact import Redactor

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


def redaction_table() -> list[str]:
    rows = [
        "| text | secrets | plain copy MB/s | redact MB/s | streamed (4 KiB) MB/s "
        "| redact / copy time |",
        "|---|---|---|---|---|---|",
    ]
    for size in (64 * KIB, 1024 * KIB):
        for n_secrets in (1, 8):
            values = {f"S{i}": secrets.token_urlsafe(30) for i in range(n_secrets)}
            text = _text(size, values["S0"], 4)
            redactor = Redactor(values)
            chunks = [text[i : i + 4 * KIB] for i in range(0, len(text), 4 * KIB)]

            def stream(r: Redactor = redactor, cs: list[str] = chunks) -> str:
                s = r.stream()
                return "".join([s.feed(c) for c in cs]) + s.finish()

            def copy(t: str = text) -> str:
                return "".join([t[: len(t) // 2], t[len(t) // 2 :]])

            repeats = 200 if size < 512 * KIB else 30
            t_copy = statistics.median(_timeit(copy, repeats))
            t_red = statistics.median(_timeit(lambda r=redactor, t=text: r.redact(t), repeats))
            t_str = statistics.median(_timeit(stream, repeats))
            mb = size / 1e6
            rows.append(
                f"| {size // KIB} KiB | {n_secrets} | {mb / t_copy:,.0f} | {mb / t_red:,.0f} "
                f"| {mb / t_str:,.0f} | {t_red / t_copy:,.0f}x |"
            )
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
        print("\n".join(call_table(tmp)))
        print()
        print("\n".join(audit_table(tmp)))


if __name__ == "__main__":
    main()
