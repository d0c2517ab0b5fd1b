"""The project on a CUDA GPU in one call, within 8 minutes, as one table.

    python scripts/gpu_check.py                  # on a machine with CUDA and the project's wheels
    python scripts/gpu_check.py --log-dir gpu-logs

Runs, each step under its own time limit: the `gpu`-marked tests; scripts/bench_train.py setup (b) on
CUDA in bf16 for ours (without and with model.compile) and for pytorch-forecasting (the `bench` extra);
a short real training with trainer=gpu, whose export checks ONNX-vs-PyTorch parity. Without CUDA it
still runs and prints the table, every CUDA row marked skipped (tests/test_gpu_check.py runs it so).
The steps' whole output goes to --log-dir. Exit status 1 if a step failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# seconds per step: 8 minutes in all, with the model compile and the first CUDA context included
LIMITS = {"gpu tests": 90, "bench b ours": 75, "bench b ours compile": 110, "bench b pf": 75, "train+export": 110}


def run(cmd: list[str], limit: int, log: Path) -> tuple[int | None, str]:
    """(exit status or None on timeout, output) of a command, its output also written to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit, check=False)
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        code, out = None, (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    log.write_text(out)
    return code, out


def bench_row(out: str, model: str) -> str:
    """samples/s and step time of `model`'s row of bench_train.py's table."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[1] == model:
            return f"{cells[2]} samples/s, {cells[3]} ms/step"
    return "no table row"


def check(name: str, cuda: bool, needs: str | None, fn) -> tuple[str, str, str, float]:
    if not cuda:
        return name, "skipped", "no CUDA device", 0.0
    if needs and importlib.util.find_spec(needs) is None:
        return name, "skipped", f"{needs} not installed", 0.0
    t0 = time.perf_counter()
    try:
        status, result = fn()
    except Exception as e:  # noqa: BLE001 (a broken step is one row of the table, the others still run)
        status, result = "FAIL", f"{type(e).__name__}: {e}"
    return name, status, result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log-dir", type=Path, help="where each step's output goes (default: a temporary folder)")
    p.add_argument("--steps", type=int, default=30, help="timed bench_train steps per model")
    args = p.parse_args(argv)
    logs = args.log_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    logs.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    import torch

    cuda = torch.cuda.is_available()
    env = f"torch {torch.__version__}, " + (
        f"{torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}), "
        f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}" if cuda
        else "no CUDA device: the CUDA rows are skipped")
    rows = [("environment", "ok", env, 0.0)]

    def gpu_tests():
        code, out = run([py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                        LIMITS["gpu tests"], logs / "gpu_tests.log")
        summary = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), "")
        return ("ok" if code == 0 else "FAIL"), (summary.strip("= ") or f"exit {code}")

    def bench(key: str, only: str, model: str, *overrides: str):
        def step():
            code, out = run([py, "scripts/bench_train.py", "--setup", "b", "--device", "cuda", "--only", only,
                             "--repeats", "1", "--steps", str(args.steps), *overrides], LIMITS[key],
                            logs / f"{key.replace(' ', '_')}.log")
            return ("ok" if code == 0 else "FAIL"), (bench_row(out, model) if code == 0 else
                                                     "timed out" if code is None else f"exit {code}")
        return step

    def train_export():
        run_dir = logs / "train"
        code, _ = run([py, "-m", "fusioncast.train", "trainer=gpu", "data=synthetic", "trainer.max_epochs=1",
                         "trainer.limit_train_batches=50", "export=true",
                         f"hydra.run.dir={run_dir}"], LIMITS["train+export"], logs / "train_export.log")
        meta = run_dir / "bundle" / "bundle.json"
        if code != 0 or not meta.is_file():
            return "FAIL", "timed out" if code is None else f"exit {code}, no bundle"
        parity = json.loads(meta.read_text())["parity"]
        return "ok", (f"parity on {parity['windows']} windows: max rel diff {parity['max_rel_diff']:.2e} "
                      f"(tolerance {parity['tolerance']:.0e})")

    rows.append(check("gpu-marked tests", cuda, None, gpu_tests))
    rows.append(check("bench_train b: fusioncast bf16", cuda, None, bench("bench b ours", "ours", "fusioncast")))
    rows.append(check("bench_train b: fusioncast bf16 + model.compile", cuda, None,
                      bench("bench b ours compile", "ours", "fusioncast", "model.compile=true")))
    rows.append(check("bench_train b: pytorch-forecasting bf16", cuda, "pytorch_forecasting",
                      bench("bench b pf", "pf", "pytorch-forecasting")))
    rows.append(check("train trainer=gpu, export, parity", cuda, None, train_export))
    print("| check | status | result | seconds |\n| --- | --- | --- | ---: |")
    for name, status, result, seconds in rows:
        print(f"| {name} | {status} | {result} | {seconds:.0f} |")
    print(f"\nlogs: {logs}")
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(status == "FAIL" for _, status, _, _ in main()) else 0)
