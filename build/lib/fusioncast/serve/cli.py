"""`fusioncast-serve BUNDLE [--host --port --workers --max-batch-size --max-wait-ms --max-queue ...]`.

A plain CLI, like uvicorn's. One worker process serves from this process; with --workers N uvicorn
starts N processes, each with its own model session and batcher, sharing the port.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict

from fusioncast.serve.app import ENV_CONFIG, ServeConfig, create_app
from fusioncast.serve.bundle import BundleError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = ServeConfig(bundle="")
    p = argparse.ArgumentParser(prog="fusioncast-serve", description="CPU inference server for a fusioncast bundle.")
    p.add_argument("bundle", help="bundle directory (model.onnx + bundle.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    p.add_argument("--threads", type=int, default=d.threads, help="onnxruntime intra-op threads per worker")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="series per model call")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="hold a batch that is not full this long for more requests (0: batch only what queued "
                        "during the previous model call)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="series waiting before answering 503")
    p.add_argument("--inline-max-series", type=int, default=d.inline_max_series,
                   help="run batches of at most this many series in the event loop rather than the model thread "
                        "(saves two thread wake-ups per call at low load; 0: always the thread)")
    p.add_argument("--max-series", type=int, default=d.max_series, help="series per request (413 beyond)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request size (413 beyond)")
    p.add_argument("--int8", action="store_true", help="serve the bundle's int8 model (when export kept one)")
    p.add_argument("--cache-dir", default=None, help="where the optimised graph is cached")
    p.add_argument("--timeout-graceful-shutdown", type=float, default=30.0,
                   help="seconds to finish in-flight requests after SIGTERM")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(bundle=os.path.abspath(args.bundle), variant="int8" if args.int8 else "fp32",
                         threads=args.threads, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         max_queue=args.max_queue, inline_max_series=args.inline_max_series,
                         max_series=args.max_series, max_body_bytes=args.max_body_bytes,
                         cache_dir=args.cache_dir)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                  timeout_graceful_shutdown=args.timeout_graceful_shutdown, server_header=False)
    try:
        if args.workers > 1:
            # each worker builds its app from the environment; their metrics meet in a shared directory
            os.environ[ENV_CONFIG] = json.dumps(asdict(config))
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="fusioncast-metrics-"))
            uvicorn.run("fusioncast.serve.app:app_from_env", factory=True, workers=args.workers, **common)
        else:
            uvicorn.run(create_app(config), **common)
    except BundleError as e:
        sys.exit(f"fusioncast-serve: {e}")


if __name__ == "__main__":
    main()
