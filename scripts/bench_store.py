"""What the actuals store costs a forecast: the same single-series requests, back to back over one
keep-alive connection, to `fusioncast-serve --store none` and to `--store sqlite` (issued forecasts
recorded), alternately in rounds; the server's CPU time per forecast (user + system of its process,
from /proc) and the median latency seen by the client.

    python scripts/bench_store.py BUNDLE [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(bundle: Path, store: str, body: bytes, n: int, tmp: Path) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fusioncast.serve.cli", str(bundle), "--port", str(port),
                             "--log-level", "warning", "--store", store, "--cache-dir", str(tmp / "ort")])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(headers={"content-type": "application/json"}) as client:
            for _ in range(100):  # warm-up
                client.post(url + "/v1/forecast", content=body)
            cpu0, lat = cpu_seconds(proc.pid), []
            for _ in range(n):
                t = time.perf_counter()
                r = client.post(url + "/v1/forecast", content=body)
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            time.sleep(0.2)  # the last background write of issued forecasts
            cpu = cpu_seconds(proc.pid) - cpu0
        return cpu / n * 1e6, float(np.median(lat)) * 1e6
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    body = (a.bundle / "example_request.json").read_bytes()
    body = json.dumps({"series": json.loads(body)["series"][:1]}).encode()
    tmp = Path(tempfile.mkdtemp(prefix="fusioncast-bench-store-"))
    results = {"none": [], "sqlite": []}
    for i in range(a.rounds):
        for store in ("none", "sqlite"):
            target = "none" if store == "none" else str(tmp / f"store-{i}.sqlite3")
            results[store].append(run(a.bundle, target, body, a.requests, tmp))
    for store, rows in results.items():
        cpu, lat = np.median([r[0] for r in rows]), np.median([r[1] for r in rows])
        print(f"store {store:6s}: server CPU {cpu:7.0f} us/forecast, client median latency {lat:7.0f} us")
    ratio = np.median([r[0] for r in results["sqlite"]]) / np.median([r[0] for r in results["none"]])
    print(f"CPU ratio sqlite / none: {ratio:.3f}")


if __name__ == "__main__":
    main()
