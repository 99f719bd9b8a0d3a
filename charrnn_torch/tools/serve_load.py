"""A load test of a running `charrnn serve`: `clients` threads, each on its own keep-alive
connection, send `requests` POST /sample requests in all, as fast as they are answered.

Request i asks for seed i % SEEDS, so every seed is asked for several times, by different clients
at once: besides an error or a non-200 answer, two different texts for one seed count as a
failure (a request's sampling touched by another's). `charrnn bench --serve URL` times it (latency
percentiles, throughput); the tests run it for its failures only, never for its speed.
"""
import threading
import time

import httpx
import numpy as np

from ..errors import UserError, one_line

SEEDS = 10
PRIME = "\n"  # in every chars-mode vocabulary of a text with lines, and any byte-mode one


def reach(url, timeout=10.0):
    """The server's GET /health answer, or a UserError saying why there is none."""
    try:
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as http:
            r = http.get("/health")
            r.raise_for_status()
            return r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise UserError(f"no charrnn serve answers at {url} ({type(e).__name__}: {one_line(e)[:200]})") from None


def body_of(i, length, prime=PRIME):
    return {"prime": prime, "length": length, "seed": i % SEEDS}


def run_load(url, clients, requests, length, prime=PRIME, timeout=120.0):
    """{"latencies": seconds of each answered request, "failures": [(i, reason)], "texts": {i: text},
    "seconds": wall time of the whole test, "clients", "requests", "length"}."""
    lock, next_i = threading.Lock(), iter(range(requests))
    out = {"latencies": [], "failures": [], "texts": {}, "clients": clients, "requests": requests, "length": length}

    def client():
        # trust_env=False: no proxy from the environment between us and 127.0.0.1.
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as http:
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                text, failure = _post(http, body_of(i, length, prime))
                with lock:
                    if failure:
                        out["failures"].append((i, failure))
                    else:
                        out["latencies"].append(time.perf_counter() - t0)
                        out["texts"][i] = text

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["seconds"] = time.perf_counter() - t0
    out["failures"] += mismatches(out["texts"])
    return out


def _post(http, body):
    """(the text answered, None), or (None, a one-line reason there is none)."""
    try:
        r = http.post("/sample", json=body)
        if r.status_code != 200:
            return None, f"HTTP {r.status_code}: {one_line(r.text)[:200]}"
        return r.json()["text"], None
    except (httpx.HTTPError, ValueError, KeyError) as e:
        return None, f"{type(e).__name__}: {one_line(e)[:200]}"


def mismatches(texts):
    """(i, reason) for each request whose text differs from the first one of its seed."""
    first, bad = {}, []
    for i in sorted(texts):
        seen = first.setdefault(i % SEEDS, (i, texts[i]))
        if seen[1] != texts[i]:
            bad.append((i, f"seed {i % SEEDS}: a different text from request {seen[0]}'s"))
    return bad


def summary(out):
    lat = np.array(out["latencies"]) * 1000
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if len(lat) else (float("nan"),) * 3
    return {"clients": out["clients"], "requests": out["requests"], "length": out["length"],
            "failures": len(out["failures"]), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "max_ms": lat.max() if len(lat) else float("nan"), "requests_per_s": len(lat) / out["seconds"],
            "chars_per_s": len(lat) * out["length"] / out["seconds"], "seconds": out["seconds"]}


def format_table(s):
    head = "| clients | requests | characters each | failures | p50 | p90 | p99 | max | requests/s | characters/s |"
    row = (f"| {s['clients']} | {s['requests']} | {s['length']} | {s['failures']} | {s['p50_ms']:.0f} ms | "
           f"{s['p90_ms']:.0f} ms | {s['p99_ms']:.0f} ms | {s['max_ms']:.0f} ms | {s['requests_per_s']:.1f} | "
           f"{s['chars_per_s']:,.0f} |")
    return "\n".join([head, "|" + " --- |" * 10, row])
