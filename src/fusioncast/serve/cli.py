"""`fusioncast-serve BUNDLE [--host --port --workers --max-batch-size ... --token-file ... --max-connections ...]`.

A plain CLI, like uvicorn's. One worker process serves from this process; with --workers N uvicorn
starts N processes, each with its own model session and batcher, sharing the port. A bundle that
cannot be served, or a token file without a token, stops it with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict

from fusioncast.serve.app import ENV_CONFIG, ServeConfig, create_app
from fusioncast.serve.bundle import Bundle, BundleError, Model
from fusioncast.serve.connections import (
    FD_RESERVE,
    ConnectionLimits,
    LimitedHttpToolsProtocol,
    raise_open_file_limit,
)
from fusioncast.serve.guard import (
    LOOPBACK_ADDRESSES,
    LOOPBACK_HOSTS,
    TOKEN_ENV,
    default_allowed_hosts,
    load_tokens,
)

log = logging.getLogger("fusioncast.serve")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d, c = ServeConfig(bundle=""), ConnectionLimits()
    p = argparse.ArgumentParser(prog="fusioncast-serve", description="CPU inference server for a fusioncast bundle.")
    p.add_argument("bundle", help="bundle directory (model.onnx + bundle.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; see docs/serving.md)")
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
    p.add_argument("--bundle-sha256", default=None,
                   help="refuse to serve a bundle whose digest is not this one (fusioncast-export prints it)")
    f = p.add_argument_group("actuals")
    f.add_argument("--store", default=d.store,
                   help="where posted actuals and issued forecasts are kept: 'sqlite' (a file per bundle in the cache "
                        "directory), a SQLite file path, postgresql://..., redis://... (several machines), or 'none'")
    f.add_argument("--monitor-hours", type=float, default=d.monitor_hours,
                   help="the monitoring window, back from the latest actual (GET /v1/monitoring)")
    f.add_argument("--max-actuals", type=int, default=d.max_actuals, help="actuals per POST /v1/actuals (413 beyond)")
    f.add_argument("--no-dashboard", action="store_true", help="no dashboard page at /")
    a = p.add_argument_group("access")
    a.add_argument("--token-file", default=None,
                   help=f"bearer tokens (one per line) that /v1/* and /metrics require; else ${TOKEN_ENV}; "
                        "neither: no authentication")
    a.add_argument("--allowed-hosts", type=_names, default=None,
                   help="Host headers served, comma-separated ('*.example.com' patterns, '*': any); default: "
                        f"{', '.join(LOOPBACK_HOSTS)} and the --host address")
    a.add_argument("--cors-origins", type=_names, default=[],
                   help="origins whose web pages may call the API (comma-separated); default: none (CORS off)")
    a.add_argument("--no-docs", action="store_true", help="no /docs and /openapi.json")
    n = p.add_argument_group("connections")
    n.add_argument("--max-connections", type=int, default=c.max_connections,
                   help="open connections at most (one more closes the longest-idle one); lowered to fit the "
                        "process' open-file limit")
    n.add_argument("--limit-concurrency", type=int, default=None,
                   help="open connections (or requests in progress) from which on requests get 503 (uvicorn's "
                        "limit; off by default: the connection cap and --max-queue bound the work, and under a flood "
                        "of connections a 503 would refuse the very clients the cap makes room for)")
    n.add_argument("--timeout-keep-alive", type=float, default=c.idle_timeout_s,
                   help="seconds a connection may stay open with no request in progress")
    n.add_argument("--timeout-headers", type=float, default=c.header_timeout_s,
                   help="seconds from a request's first byte to the end of its headers (408 beyond)")
    n.add_argument("--timeout-body", type=float, default=c.body_timeout_s,
                   help="seconds from the end of a request's headers to the end of its body (408 beyond)")
    n.add_argument("--max-header-bytes", type=int, default=c.max_header_bytes, help="request line + headers (431 beyond)")
    p.add_argument("--timeout-graceful-shutdown", type=float, default=30.0,
                   help="seconds to finish in-flight requests after SIGTERM")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def _limits(args: argparse.Namespace) -> ConnectionLimits:
    files = raise_open_file_limit()
    cap = min(args.max_connections, max(1, files - FD_RESERVE))
    if cap < args.max_connections:
        log.warning("at most %d connections: the process may open %d files", cap, files)
    return ConnectionLimits(max_connections=cap, idle_timeout_s=args.timeout_keep_alive,
                            header_timeout_s=args.timeout_headers, body_timeout_s=args.timeout_body,
                            max_header_bytes=args.max_header_bytes)


def _setup(args: argparse.Namespace) -> tuple[ServeConfig, ConnectionLimits]:
    """The app's config and the connection limits; raises BundleError / ValueError for what cannot be served."""
    config = ServeConfig(bundle=os.path.abspath(args.bundle), variant="int8" if args.int8 else "fp32",
                         threads=args.threads, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         max_queue=args.max_queue, inline_max_series=args.inline_max_series,
                         max_series=args.max_series, max_body_bytes=args.max_body_bytes, cache_dir=args.cache_dir,
                         bundle_sha256=args.bundle_sha256, token_file=args.token_file,
                         allowed_hosts=args.allowed_hosts or default_allowed_hosts(args.host),
                         cors_origins=args.cors_origins, docs=not args.no_docs, store=args.store,
                         monitor_hours=args.monitor_hours, max_actuals=args.max_actuals,
                         dashboard=not args.no_dashboard)
    limits = _limits(args)
    auth = load_tokens(config.token_file) is not None
    if not auth and args.host not in LOOPBACK_ADDRESSES:
        log.warning("serving on %s without authentication: anyone who reaches this address can use the API "
                    "(--token-file or $%s turn it on)", args.host, TOKEN_ENV)
    return config, limits


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, limits = _setup(args)
        if args.workers > 1:  # check the bundle here: a worker's failure would be a traceback per worker
            bundle = Bundle.load(config.bundle, expect_sha256=config.bundle_sha256)
            Model(bundle, variant=config.variant, threads=1, cache_dir=config.cache_dir)
            app = None
        else:
            app = create_app(config)
    except (BundleError, ValueError) as e:
        sys.exit(f"fusioncast-serve: {e}")
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                  timeout_graceful_shutdown=args.timeout_graceful_shutdown, server_header=False,
                  http=functools.partial(LimitedHttpToolsProtocol, limits=limits),
                  timeout_keep_alive=args.timeout_keep_alive,
                  limit_concurrency=args.limit_concurrency)
    if app is None:
        # each worker builds its app from the environment; their metrics meet in a shared directory
        os.environ[ENV_CONFIG] = json.dumps(asdict(config))
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="fusioncast-metrics-"))
        uvicorn.run("fusioncast.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    else:
        uvicorn.run(app, **common)


if __name__ == "__main__":
    main()
