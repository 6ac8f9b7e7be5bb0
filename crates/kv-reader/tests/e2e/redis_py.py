"""redis-py, a real Redis client library, against the reader's Redis-protocol port, in RESP2
and RESP3. Run by the end-to-end test `resp_clients.rs` after it wrote, through kv-writer:
`plain` = "v1" (no expiry), `expiring` = "short" (X-KV-TTL-Seconds: 600, written at
`written_ms`), `users/ada` and `users/grace`. Exits non-zero at the first answer that is not
what Redis gives.

  python redis_py.py HOST PORT WRITTEN_MS
"""

import sys
import time

import redis
from redis.exceptions import ReadOnlyError

host, port, written_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TTL_MS = 600_000


def expect(what, got, wanted):
    if got != wanted:
        sys.exit(f"{what}: got {got!r}, wanted {wanted!r}")


def within(what, got, low, high):
    if not low <= got <= high:
        sys.exit(f"{what}: got {got!r}, wanted {low}..{high}")


for protocol in (2, 3):
    r = redis.Redis(host=host, port=port, protocol=protocol, socket_timeout=30)
    name = f"RESP{protocol}"
    expect(f"{name} PING", r.ping(), True)
    expect(f"{name} GET", r.get("plain"), b"v1")
    expect(f"{name} GET of a missing key", r.get("missing"), None)
    expect(f"{name} MGET", r.mget(["plain", "missing", "expiring"]), [b"v1", None, b"short"])
    expect(f"{name} SCAN", sorted(r.scan_iter(match="users/*", count=1)), [b"users/ada", b"users/grace"])
    cursor, page = r.scan(0, match="users/*", count=1)
    expect(f"{name} SCAN's first page", (cursor != 0, page), (True, [b"users/ada"]))
    expect(f"{name} TYPE", r.type("plain"), b"string")
    expect(f"{name} TYPE of a missing key", r.type("missing"), b"none")
    info = r.info()
    expect(f"{name} INFO has redis_version", "redis_version" in info, True)
    expect(f"{name} INFO server", "redis_version" in r.info("server"), True)

    # Redis's answers on expiry: -2 absent, -1 no expiry.
    for command in ("ttl", "pttl", "expiretime", "pexpiretime"):
        expect(f"{name} {command.upper()} of a key without expiry", getattr(r, command)("plain"), -1)
        expect(f"{name} {command.upper()} of a missing key", getattr(r, command)("missing"), -2)
    now_ms = int(time.time() * 1000)
    expires_ms = written_ms + TTL_MS
    # The writer stamps the expiry when it takes the write: between the test's clock before the
    # request and now.
    within(f"{name} PEXPIRETIME", r.pexpiretime("expiring"), expires_ms, now_ms + TTL_MS)
    within(f"{name} EXPIRETIME", r.expiretime("expiring"), expires_ms // 1000, (now_ms + TTL_MS) // 1000)
    within(f"{name} PTTL", r.pttl("expiring"), 1, TTL_MS)
    within(f"{name} TTL", r.ttl("expiring"), 1, TTL_MS // 1000)

    pipe = r.pipeline(transaction=False)
    pipe.get("plain").mget(["users/ada", "missing"]).exists("plain", "missing").type("expiring")
    pipe.ttl("plain").pttl("missing").ttl("expiring")
    got = pipe.execute()
    expect(f"{name} pipeline", got[:6], [b"v1", [b"Ada", None], 1, b"string", -1, -2])
    within(f"{name} pipelined TTL", got[6], 1, TTL_MS // 1000)

    for write in (lambda: r.set("plain", "v2"), lambda: r.delete("plain"), lambda: r.expire("plain", 5)):
        try:
            write()
        except ReadOnlyError:
            pass
        else:
            sys.exit(f"{name}: a write was not refused with ReadOnlyError")
    expect(f"{name} GET after the refused writes", r.get("plain"), b"v1")
    r.close()
    print(f"redis-py {redis.__version__} {name}: ok")
