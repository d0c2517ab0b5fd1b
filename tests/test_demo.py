"""fusioncast-demo end to end with tiny settings: trains, exports, serves, replays hours of forecasts and
actuals through the API, and stops (--exit); its store then holds monitoring numbers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY


@pytest.mark.slow
def test_the_demo_runs_from_nothing_to_a_served_dashboard(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [o for o in TINY if o != "export=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "fusioncast.demo", "--out", str(tmp_path / "demo"), "--port", str(port),
                        "--exit", "--replay-hours", "6", *overrides], capture_output=True, text=True, timeout=600, check=False,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"http://127.0.0.1:{port}/" in r.stdout
    assert (tmp_path / "demo" / "bundle" / "bundle.json").is_file()
    from fusioncast.serve.store_sql import SqlStore

    store = SqlStore(str(tmp_path / "demo" / "actuals.sqlite3"))
    assert len(store.forecasts(None, -(2**63))) == 6 * 3 and store.latest() is not None  # 6 hours x 3 zones
    store.close()
