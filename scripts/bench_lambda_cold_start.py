"""Cold start of the AWS Lambda handler, and the size of what it installs, against Lambda's limits.

    python scripts/bench_lambda_cold_start.py                     # trains the serving benchmark's model first
    python scripts/bench_lambda_cold_start.py --bundle DIR --runs 7 --out cold_start.json

A cold start is what Lambda does in a new execution environment before it answers: start Python, import
`fusioncast.serve.lambda_entry` (whose module-level init loads the bundle, builds the onnxruntime session
and warms it up) and answer the first request. Each run is a fresh process of a virtual environment
that has only the `lambda` extra (the `serve` extra + mangum) installed, as the image has (no torch:
checked), timed phase by phase inside the process:

    python    interpreter start, until the first line of the measuring code runs
    import    fusioncast.serve.aws_lambda (mangum, FastAPI, numpy, pandas, ...)
    ort       import onnxruntime
    init      LambdaHandler.from_env(): bundle load and checks, session, warm-up, the app's lifespan
    first     the first forecast (a function URL event with the bundle's example request)
    second    the next one, warm, for comparison

and the process's CPU time up to the first answer (all threads), which the load of other jobs on the
machine changes much less than the wall-clock phases,

in four setups, interleaved run by run: the optimised graph cached beforehand (as Dockerfile.lambda does
at build time) or not, and pyarrow importable or not (an import hook makes `import pyarrow` fail as if it
were not installed; pandas then does without it). Medians over the runs, and the process's peak RSS
(Lambda bills memory by the configured size, and the function must fit in it). The forecasts of all
setups must be identical. One more run under `python -X importtime` gives the import cost per package.

Sizes: every installed distribution's files (its RECORD) in that environment, against Lambda's 250 MB
(unzipped, function + layers) for a .zip package and 10 GB for a container image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
ZIP_LIMIT_MB, IMAGE_LIMIT_MB = 250, 10 * 1024
PHASES = ("python", "import", "ort", "init", "first", "second")
# the packages whose import time is reported (the first import of each, subimports included)
PACKAGES = ("fusioncast.serve.aws_lambda", "mangum", "fastapi", "pydantic", "numpy", "pandas", "pyarrow", "orjson",
            "prometheus_client", "onnxruntime")

# runs inside the Lambda environment's interpreter: argv[1] is a JSON of what to do
CHILD = r"""
import time, sys
t0 = time.perf_counter(); wall0 = time.time()
import json, hashlib, importlib.abc
args = json.loads(sys.argv[1])

class Missing(importlib.abc.MetaPathFinder):  # as if these packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in args["block"]:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import fusioncast.serve.aws_lambda as aws
t1 = time.perf_counter()
import onnxruntime
t2 = time.perf_counter()
handler = aws.LambdaHandler.from_env()
t3 = time.perf_counter()
events = [json.load(open(path)) for path in args["events"]]
first = handler(events[0], None)
t4 = time.perf_counter()
cpu = time.process_time()  # all threads, since the process started: what the load of other jobs leaves alone
second = handler(events[0], None)
t5 = time.perf_counter()
assert first["statusCode"] == 200 and second["body"] == first["body"], first
heavy = ("torch", "lightning", "hydra", "omegaconf", "wandb", "matplotlib", "pandas", "pyarrow", "uvicorn")
print("RESULT " + json.dumps({
    "wall0": wall0, "import": t1 - t0, "ort": t2 - t1, "init": t3 - t2, "first": t4 - t3, "second": t5 - t4, "cpu": cpu,
    # VmHWM, not ru_maxrss: that one keeps the peak of the parent this process was forked from
    "maxrss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
    "modules": sorted(m for m in heavy if m in sys.modules),
    "answer_sha256": hashlib.sha256(first["body"].encode()).hexdigest(),
    "answers": [handler(e, None) for e in events[1:]]}))  # any further events: their answers, for tests
"""

SIZES = r"""
import json, importlib.metadata as md
out = {}
for d in md.distributions():
    size = 0
    for f in d.files or []:
        p = f.locate()
        if p.is_file():
            size += p.stat().st_size
    out[d.metadata["Name"].lower()] = size
print(json.dumps(out))
"""


def lambda_env(venv: Path) -> Path:
    """A virtual environment with only the lambda extra; fusioncast itself reinstalled from this checkout."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{ROOT}[lambda]"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)],
                   check=True)
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if no_torch.returncode == 0:
        sys.exit(f"{venv} has torch installed: it must hold only the lambda extra")
    return python


def make_event(bundle: Path, path: Path) -> Path:
    from fusioncast.serve.aws_lambda import http_event

    template = json.loads((ROOT / "deploy" / "aws" / "events" / "function-url.json").read_text())
    body = (bundle / "example_request.json").read_bytes()
    path.write_text(json.dumps(http_event(template, "POST", "/v1/forecast", body,
                                          headers={"content-type": "application/json"})))
    return path


def cold_start(python: Path, bundle: Path, event: Path, cache: Path, block: tuple[str, ...] = (),
               importtime: bool = False, more_events: tuple[Path, ...] = ()) -> dict:
    """One cold start in a fresh process: the phases (seconds), peak RSS, heavy modules loaded, the answer's
    hash; then the answers to `more_events`, if any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSIONCAST_", "PYTHON"))}
    env.update(FUSIONCAST_BUNDLE=str(bundle), FUSIONCAST_CACHE=str(cache), OMP_NUM_THREADS="1")
    args = json.dumps({"events": [str(e) for e in (event, *more_events)], "block": list(block)})
    cmd = [str(python), *(["-X", "importtime"] if importtime else []), "-c", CHILD, args]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(f"cold start failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    r["python"] = r.pop("wall0") - start
    r["total"] = sum(r[p] for p in ("python", "import", "ort", "init", "first"))
    if importtime:
        r["import_ms"] = import_times(proc.stderr)
    return r


def import_times(stderr: str) -> dict[str, float]:
    """ms per package, the first time it was imported (`python -X importtime`: cumulative microseconds)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (x.strip() for x in line[len("import time:"):].split("|"))
        if name in PACKAGES and name not in out and cumulative.isdigit():
            out[name] = int(cumulative) / 1e3
    return out


def sizes(python: Path) -> dict[str, float]:
    """MB per installed distribution (its RECORD's files) in that environment."""
    proc = subprocess.run([str(python), "-c", SIZES], capture_output=True, text=True, check=True)
    return {k: v / 2**20 for k, v in json.loads(proc.stdout).items()}


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="a bundle directory (default: train the serving benchmark's model)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fusioncast-bench-lambda")
    p.add_argument("--venv", type=Path, help="the lambda-extra environment (default: WORKDIR/lambda-venv, made once)")
    p.add_argument("--runs", type=int, default=5, help="cold starts per setup")
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.bundle is None:
        from bench_serve import build_model

        args.bundle = build_model(args.workdir)[0]
    bundle = args.bundle.resolve()
    python = lambda_env((args.venv or args.workdir / "lambda-venv").resolve())
    event = make_event(bundle, args.workdir / "event.json")
    prebuilt = args.workdir / "graph-cache"
    cold_start(python, bundle, event, prebuilt)  # fills the graph cache, as the image build does
    setups = {"graph cached (as the image), pyarrow installed": (prebuilt, ()),
              "graph cached, without pyarrow": (prebuilt, ("pyarrow",)),
              "graph optimised at start, pyarrow installed": (None, ()),
              "graph optimised at start, without pyarrow": (None, ("pyarrow",))}
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for _ in range(args.runs):  # interleaved: the machine's load moves every setup alike
        for name, (cache, block) in setups.items():
            fresh = Path(tempfile.mkdtemp(prefix="ort-", dir=args.workdir)) if cache is None else cache
            runs[name].append(cold_start(python, bundle, event, fresh, block))
    imports = cold_start(python, bundle, event, prebuilt, importtime=True)["import_ms"]
    load_end = os.getloadavg()
    answers = {r["answer_sha256"] for rs in runs.values() for r in rs}
    if len(answers) != 1:
        sys.exit(f"the setups answered differently: {answers}")
    table = {name: {k: statistics.median(r[k] for r in rs) for k in (*PHASES, "total", "cpu", "maxrss_mb")}
             for name, rs in runs.items()}
    modules = {name: rs[0]["modules"] for name, rs in runs.items()}
    dists = sizes(python)
    tooling = ("pip", "setuptools", "wheel")  # the environment's own installers, not part of a package
    package = {k: v for k, v in dists.items() if k not in tooling}
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
                   f"(the Lambda image: 3.12)",
        "load_average": {"start": load_start, "end": load_end}, "runs": args.runs, "bundle": str(bundle),
        "bundle_mb": du_mb(bundle), "cold_start_s": table, "modules": modules, "import_ms": imports,
        "sizes_mb": dict(sorted(package.items(), key=lambda kv: -kv[1])),
        "package_mb": sum(package.values()),
        "package_without_pyarrow_mb": sum(v for k, v in package.items() if k != "pyarrow"),
        "limits_mb": {"zip_unzipped": ZIP_LIMIT_MB, "container_image": IMAGE_LIMIT_MB},
    }
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def print_tables(r: dict) -> None:
    la = r["load_average"]
    print(f"\nmachine: {r['machine']}; load average {la['start'][0]:.1f} at the start, {la['end'][0]:.1f} at the end;"
          f" medians of {r['runs']} cold starts per setup\n")
    print("| setup | " + " | ".join(PHASES) + " | cold start (python..first) | its CPU time | peak RSS |")
    print("| --- |" + " ---: |" * (len(PHASES) + 3))
    for name, t in r["cold_start_s"].items():
        cells = [f"{t[k] * 1e3:.0f} ms" for k in (*PHASES, "total", "cpu")]
        print(f"| {name} | " + " | ".join(cells) + f" | {t['maxrss_mb']:.0f} MB |")
    print("\nheavy modules loaded:", r["modules"])
    print("import time per package (first import, subimports included):",
          ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(r["import_ms"].items(), key=lambda kv: -kv[1])))
    top = ", ".join(f"{k} {v:.0f}" for k, v in list(r["sizes_mb"].items())[:8])
    print(f"\ninstalled (lambda extra, unzipped): {r['package_mb']:.0f} MB ({top} MB ...); without pyarrow "
          f"{r['package_without_pyarrow_mb']:.0f} MB; the bundle {r['bundle_mb']:.1f} MB. Lambda: "
          f"{r['limits_mb']['zip_unzipped']} MB unzipped for a .zip package, "
          f"{r['limits_mb']['container_image']} MB for a container image")


if __name__ == "__main__":
    main()
