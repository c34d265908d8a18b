#!/usr/bin/env python3
"""Medians of the wrk runs in a bench results file (scripts/bench-common.sh) and target checks.

usage: bench-summary.py RESULTS.tsv serve|ingest CONNECTIONS BATCH
"""
import statistics
import sys

path, mode, conns, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
runs = {}
for line in open(path):
    name, rnd, rps, p50, p99, reqs, errs, load1 = line.split("\t")
    runs.setdefault(name, {})[int(rnd)] = dict(
        rps=float(rps), p50=float(p50), p99=float(p99), errors=int(errs), load1=float(load1))

med = lambda xs: statistics.median(xs)
print(f"{'endpoint':<14} {'req/s (median)':>14} {'p50 ms':>8} {'p99 ms':>8}  per round (req/s)  errors")
for name, rounds in runs.items():
    r = [rounds[k] for k in sorted(rounds)]
    print(f"{name:<14} {med([x['rps'] for x in r]):>14.0f} {med([x['p50'] for x in r]):>8.2f} "
          f"{med([x['p99'] for x in r]):>8.2f}  {' '.join('%.0f' % x['rps'] for x in r)}  "
          f"{sum(x['errors'] for x in r)}")
loads = [x["load1"] for rounds in runs.values() for x in rounds.values()]
print(f"load average (1 min) after each run: min {min(loads):.2f}, median {med(loads):.2f}, max {max(loads):.2f}")

ok = True
def check(what, holds, detail):
    global ok
    ok &= holds
    print(f"target {what}: {'HOLDS' if holds else 'FAILS'} ({detail})")

errors = sum(x["errors"] for rounds in runs.values() for x in rounds.values())
check("no errors (non-2xx or socket)", errors == 0, f"{errors} errors")
if mode == "serve" and "top10_nocheck" in runs:
    t, n = runs["top10"], runs["top10_nocheck"]
    rounds = [k for k in sorted(t) if k in n]
    print("cost of the per-request change check (top10 vs top10_nocheck, same round): "
          f"throughput ratio median {med([t[k]['rps'] / n[k]['rps'] for k in rounds]):.3f}, "
          f"p50 +{med([t[k]['p50'] - n[k]['p50'] for k in rounds]):.3f} ms, "
          f"p99 +{med([t[k]['p99'] - n[k]['p99'] for k in rounds]):.3f} ms (medians of the per-round differences)")
if mode == "serve":
    h, t = runs["healthz"], runs["top10"]
    ratios = [t[k]["rps"] / h[k]["rps"] for k in sorted(t) if k in h]
    check("top-10 thrpt >= 0.5 x healthz thrpt (same round)", med(ratios) >= 0.5,
          f"median ratio {med(ratios):.3f}; per round {', '.join(f'{x:.3f}' for x in ratios)}")
    if "top10_foldin" in runs:
        f = runs["top10_foldin"]
        ratios = [f[k]["rps"] / h[k]["rps"] for k in sorted(f) if k in h]
        check("top-10 with the fold-in write mix >= 0.5 x healthz thrpt (same round)",
              med(ratios) >= 0.5,
              f"median ratio {med(ratios):.3f}; per round {', '.join(f'{x:.3f}' for x in ratios)}")
    for name in ("healthz", "prediction", "top10", "top10_foldin"):
        if name not in runs:
            continue
        p99 = med([x["p99"] for x in runs[name].values()])
        check(f"p99 <= 5 ms at {conns} connections, {name}", p99 <= 5.0, f"median p99 {p99:.2f} ms")
else:
    b = runs["batch1000"]
    rate = med([x["rps"] * batch for x in b.values()])
    check(f"batches of {batch}: >= 100,000 ratings/s", rate >= 100_000, f"median {rate:,.0f} ratings/s")
    s = med([x["rps"] for x in runs["single"].values()])
    check(f"single-rating POSTs at {conns} connections: >= 5,000 req/s", s >= 5000, f"median {s:,.0f} req/s")
sys.exit(0 if ok else 1)
