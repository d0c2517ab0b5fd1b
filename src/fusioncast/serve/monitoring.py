"""GET /v1/monitoring: the issued forecasts joined with the actuals posted since, over the last
`hours` hours of actuals (up to the latest one).

Every (issued forecast, horizon step) whose time has an actual is one pair. By hour (the actual's
time, floored to the hour): pairs, mean absolute error of the median, and the coverage of the
interval between the lowest and highest quantile (P10-P90 for the default quantiles). The worst series
have the largest WAPE (sum of absolute errors over sum of absolute actuals), the busiest the largest
sum of actuals in the window. The same numbers are Prometheus gauges on /metrics.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import orjson

from fusioncast.serve.store import Actual, Issued

HOUR = 3600 * 10**9
TOP = 5


def iso(t: int) -> str:
    return str(np.datetime64(t, "ns").astype("datetime64[s]"))


def _stats(y: np.ndarray, med: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    err = np.abs(y - med)
    total = float(np.abs(y).sum())
    return {"pairs": len(y), "mae": float(err.mean()), "bias": float((med - y).mean()),
            "coverage": float(((lo <= y) & (y <= hi)).mean()),
            "wape": float(err.sum() / total) if total > 0 else None}


def monitoring(actuals: list[Actual], issued: list[Issued], quantiles: list[float], times_of, hours: float) -> dict:
    """The monitoring document from the stored actuals and issued forecasts (`times_of(t0)`: a window's
    H forecast times)."""
    q = np.asarray(quantiles, np.float64)
    lo_i, hi_i, med_i = int(np.argmin(q)), int(np.argmax(q)), int(np.argmin(np.abs(q - 0.5)))
    out = {"hours": hours, "interval": [float(q[lo_i]), float(q[hi_i])], "median": float(q[med_i]),
           "from": None, "to": None, "actuals": 0, "forecasts": 0, "overall": None, "by_hour": [], "worst": [],
           "busiest": []}
    if not actuals:
        return out
    latest = max(t for _, t, _, _ in actuals)
    since = latest - int(hours * HOUR)
    window = [(s, t, v) for s, t, v, _ in actuals if t > since]
    value = {(s, t): v for s, t, v in window}
    pairs = []  # series, t, y, median, lo, hi
    for s, t0, record in issued:
        quant = orjson.loads(record)["served"]
        for h, t in enumerate(times_of(t0).tolist()):
            y = value.get((s, t))
            if y is not None:
                row = quant[h]
                pairs.append((s, t, y, row[med_i], row[lo_i], row[hi_i]))
    out.update({"from": iso(since), "to": iso(latest), "actuals": len(window),
                "forecasts": len({(s, t0) for s, t0, _ in issued})})
    totals = defaultdict(float)
    counts = defaultdict(int)
    for s, _, v in window:
        totals[s] += v
        counts[s] += 1
    per_series = {}
    if pairs:
        series = np.array([p[0] for p in pairs], object)
        t = np.array([p[1] for p in pairs], np.int64)
        y, med, lo, hi = (np.array([p[k] for p in pairs], np.float64) for k in (2, 3, 4, 5))
        out["overall"] = _stats(y, med, lo, hi)
        hour = t - t % HOUR
        for hr in np.unique(hour):
            m = hour == hr
            out["by_hour"].append({"hour": iso(int(hr)), **_stats(y[m], med[m], lo[m], hi[m])})
        for s in np.unique(series):
            m = series == s
            per_series[s] = _stats(y[m], med[m], lo[m], hi[m])
    ranked = sorted(per_series, key=lambda s: (per_series[s]["wape"] is None, -(per_series[s]["wape"] or 0), s))
    out["worst"] = [{"series": s, **per_series[s]} for s in ranked[:TOP]]
    busiest = sorted(totals, key=lambda s: (-totals[s], s))[:TOP]
    out["busiest"] = [{"series": s, "actuals": counts[s], "total": totals[s], **(per_series.get(s) or {})}
                      for s in busiest]
    return out


def gauges(doc: dict) -> bytes:
    """The monitoring document's overall numbers as Prometheus text (gauges)."""
    o = doc.get("overall") or {}
    rows = [("fusioncast_monitor_actuals", "Actuals in the monitoring window", doc.get("actuals", 0)),
            ("fusioncast_monitor_pairs", "Issued forecast steps with an actual in the window", o.get("pairs", 0))]
    for key, text in (("mae", "Mean absolute error of the median forecast"),
                      ("coverage", "Fraction of actuals inside the served interval (lowest to highest quantile)"),
                      ("wape", "Sum of absolute errors over sum of actuals")):
        if o.get(key) is not None:
            rows.append((f"fusioncast_monitor_{key}", f"{text}, over the monitoring window", o[key]))
    lines = []
    for name, text, v in rows:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {float(v)!r}"]
    return ("\n".join(lines) + "\n").encode()
