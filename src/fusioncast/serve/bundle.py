"""A bundle on disk (model.onnx + bundle.json) and the onnxruntime session that runs it. No torch.

A bundle is checked whole before anything of it is used (`Bundle.load`): bundle.json's `integrity`
record holds the sha256 of every file the bundle is made of and a digest over bundle.json's content
and those hashes, so an edited vocabulary or scaler is refused like an edited model. Every file it
names lies inside the bundle directory. The digest is what a deployment pins
(`fusioncast-serve --bundle-sha256`, `fusioncast-predict bundle_sha256=`); /v1/model and every
answer report it. A malformed bundle raises BundleError with one line that names the problem.

onnxruntime is tuned for a small model answering small batches: one intra-op thread by default
(a thread pool costs more than it saves on a (1, 36, 20) input), sequential execution, and the
graph optimised once (without the fusions in DISABLED_OPTIMIZERS) and cached on disk, keyed by the
verified model's sha256, onnxruntime's version and those settings. A cached graph is used only when
its own sha256 matches the record written next to it when it was made from the verified model, in a
directory only this user (or root) can write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from fusioncast.data.inference import INTERPRETATION_NAMES, OUTPUT_NAMES, empty_inputs
from fusioncast.data.preprocess import Preprocessor
from fusioncast.postfit.calibration import Calibration

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "fusioncast-bundle"
FORMAT_VERSION = 2  # 2: the integrity record
META_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXAMPLE_FILE = "example_request.json"
INTEGRITY = "integrity"
# onnxruntime's graph fusions that make this model slower: SkipLayerNormFusion's CPU kernel is slower
# than the Add + LayerNormalization it replaces (docs/benchmarks/serving.md).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class BundleError(RuntimeError):
    """A bundle directory is missing, malformed, or not the one its integrity record describes."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preprocessing_meta(pp: Preprocessor) -> dict:
    """The bundle.json keys that rebuild a Preprocessor (schema, freq, vocabularies, scalers)."""
    d = pp.to_dict()
    return {"schema": d["schema"], "freq": d["freq"], "vocabularies": d["vocab"],
            "scalers": {k: d[k] for k in ("real_center", "real_scale", "target_scales")}}


def bundle_digest(meta: dict, files: dict[str, str]) -> str:
    """sha256 over bundle.json's content (all but its integrity record, as canonical JSON) and the
    sha256 of each file it names."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY}
    text = json.dumps({"meta": body, "files": files}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_meta(path: str | os.PathLike, meta: dict, files: list[str]) -> str:
    """Write `path`/bundle.json with its integrity record over `meta` and `files` (names inside `path`,
    already written); returns the bundle digest. Export's last step: a bundle whose bundle.json is
    edited afterwards must be sealed again with this (tests do, to make variants of a bundle)."""
    path = Path(path)
    meta = json.loads(json.dumps({k: v for k, v in meta.items() if k != INTEGRITY}, default=float))  # as read back
    hashes = {name: sha256_file(path / name) for name in sorted(files)}
    digest = bundle_digest(meta, hashes)
    meta[INTEGRITY] = {"algorithm": "sha256", "files": hashes, "sha256": digest}
    tmp = path / f".{META_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path / META_FILE)
    return digest


def _inside(root: Path, name, what: str) -> Path:
    """root/name for a file name from bundle.json, refused unless it stays inside root (no absolute
    path, no '..', no link out of it)."""
    if type(name) is not str or not name:
        raise BundleError(f"{root / META_FILE}: {what} must be a file name, got {name!r}")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or Path(name).is_absolute() or Path(name).drive:
        raise BundleError(f"{root / META_FILE}: {what} {name!r} is not a file inside the bundle directory")
    full = root / pure
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except OSError as e:
        raise BundleError(f"{full}: {e.strerror or e}") from None
    if not inside:
        raise BundleError(f"{root / META_FILE}: {what} {name!r} leads outside the bundle directory")
    return full


def _read_meta(meta_file: Path) -> dict:
    try:
        text = meta_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_file} cannot be read: {e}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_file} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                          "truncated or damaged; export the bundle again") from None
    if type(meta) is not dict:
        raise BundleError(f"{meta_file} must hold a JSON object, it holds a {type(meta).__name__}")
    return meta


# the keys every bundle.json has, with their JSON types
_REQUIRED = {"schema": dict, "freq": str, "vocabularies": dict, "scalers": dict, "quantiles": list, "model": dict,
             INTEGRITY: dict}


@dataclass
class Bundle:
    """bundle.json's content and the fitted preprocessing, for the files in `path`."""

    path: Path
    meta: dict
    pp: Preprocessor
    digest: str | None = None      # the integrity record's digest, verified

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, expect_sha256: str | None = None) -> "Bundle":
        """The bundle in `path`, checked whole (with `verify`): its integrity record against bundle.json
        and every file, and, given `expect_sha256`, its digest against that. BundleError otherwise."""
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise BundleError(f"{path} is not a bundle: {META_FILE} not found")
        meta = _read_meta(meta_file)
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{meta_file}: not a {BUNDLE_FORMAT} file (its format is {meta.get('format')!r})")
        version = meta.get("format_version")
        if type(version) is not int or version > FORMAT_VERSION:
            raise BundleError(f"{meta_file}: format version {version!r}; this fusioncast reads up to "
                              f"{FORMAT_VERSION}: upgrade fusioncast")
        if version < FORMAT_VERSION:
            raise BundleError(f"{meta_file}: format version {version} has no integrity record; export the "
                              "checkpoint again (fusioncast-export ckpt_path=...) to get a bundle that can be checked")
        for key, kind in _REQUIRED.items():
            if type(meta.get(key)) is not kind:
                got = "missing" if key not in meta else f"a {type(meta[key]).__name__}"
                raise BundleError(f"{meta_file}: '{key}' must be a JSON {'object' if kind is dict else kind.__name__}"
                                  f", it is {got}")
        digest = _verify(path, meta, expect_sha256) if verify else meta[INTEGRITY].get("sha256")
        bundle = cls(path, meta, _preprocessor(meta_file, meta), digest)
        for variant in ("fp32", "int8") if bundle.has_int8 else ("fp32",):
            bundle.model_path(variant)  # names a file inside the bundle
        return bundle

    @property
    def has_int8(self) -> bool:
        return bool((self.meta.get("int8") or {}).get("kept"))

    def model_info(self, variant: str = "fp32") -> dict:
        if variant == "fp32":
            info = self.meta["model"]
        elif variant == "int8":
            if not self.has_int8:
                raise BundleError(f"{self.path} has no int8 model (export with int8.enabled=true)")
            info = self.meta["int8"]
        else:
            raise BundleError(f"unknown model variant {variant!r} (fp32 or int8)")
        if type(info.get("sha256")) is not str:
            raise BundleError(f"{self.path / META_FILE}: the {variant} model has no sha256")
        return info

    def model_path(self, variant: str = "fp32") -> Path:
        return _inside(self.path, self.model_info(variant).get("file"), f"the {variant} model file")

    @property
    def example_path(self) -> Path | None:
        """The example request, when the integrity record covers one."""
        return self.path / EXAMPLE_FILE if EXAMPLE_FILE in self.meta[INTEGRITY].get("files", {}) else None

    @property
    def quantiles(self) -> list[float]:
        return list(self.meta["quantiles"])

    def summary(self) -> dict:
        """What a client needs to know about the model (GET /v1/model); no path of the training machine."""
        s = self.pp.schema
        return {
            "name": self.meta.get("name"), "version": self.meta.get("version"),
            "sha256": self.meta["model"]["sha256"], "bundle_sha256": self.digest,
            "created_at": self.meta.get("created_at"),
            "freq": self.pp.freq, "max_encoder_length": s.max_encoder_length,
            "max_prediction_length": s.max_prediction_length, "quantiles": self.quantiles,
            "schema": s.to_dict(), "vocabularies": self.pp.vocab,
            "series": sorted(self.pp.target_scales), "metrics": without_paths(self.meta.get("metrics")),
            "parity": self.meta.get("parity"), "variables": self.meta.get("variables"),
            "calibration": self.meta.get("calibration"), "versions": self.meta.get("versions"),
            "data": self.meta.get("data"),
        }


def _verify(path: Path, meta: dict, expect_sha256: str | None) -> str:
    """The bundle digest, after checking the integrity record against bundle.json and every file."""
    meta_file, record = path / META_FILE, meta[INTEGRITY]
    files = record.get("files")
    if record.get("algorithm") != "sha256" or type(files) is not dict or type(record.get("sha256")) is not str:
        raise BundleError(f"{meta_file}: the integrity record must hold 'algorithm': 'sha256', 'files' and 'sha256'")
    named = [meta["model"].get("file")] + ([meta["int8"].get("file")] if (meta.get("int8") or {}).get("kept") else [])
    for name in named:
        if name not in files:
            raise BundleError(f"{meta_file}: the integrity record does not cover the model file {name!r}")
    digest = bundle_digest(meta, files)
    if digest != record["sha256"]:
        raise BundleError(f"{meta_file} was changed after export: its content gives digest {digest}, its integrity "
                          f"record says {record['sha256']}")
    for name, want in files.items():
        full = _inside(path, name, "a file of the integrity record")
        if not full.is_file():
            raise BundleError(f"{full} is missing (bundle.json's integrity record names it)")
        got = sha256_file(full)
        if got != want:
            raise BundleError(f"{full} has sha256 {got}, bundle.json says {want}")
    if expect_sha256 is not None and digest != expect_sha256.strip().lower():
        raise BundleError(f"{path} has bundle digest {digest}, not the expected {expect_sha256.strip()}")
    return digest


def _preprocessor(meta_file: Path, meta: dict) -> Preprocessor:
    """The fitted preprocessing of bundle.json, checked for every column the schema names."""
    try:
        pp = Preprocessor.from_dict({"schema": meta["schema"], "freq": meta["freq"], "vocab": meta["vocabularies"],
                                     **meta["scalers"]})
        missing = [c for c in pp.categoricals if c not in pp.vocab]
        missing += [c for c in pp.reals if c not in pp.real_center or c not in pp.real_scale]
        if missing:
            raise ValueError(f"no vocabulary or scaler for column(s) {missing}")
    except Exception as e:  # what a damaged file can hold is open-ended: one line, naming the part
        raise BundleError(f"{meta_file}: its preprocessing (schema, freq, vocabularies, scalers) does not load: "
                          f"{type(e).__name__}: {e}") from None
    return pp


# keys of the training run's metrics.json that hold paths of the training machine
_PATH_KEYS = ("checkpoint", "path", "dir", "file")


def without_paths(obj):
    """`obj` (JSON) without the entries that hold paths of the machine it was written on (checkpoint paths,
    run directories): nothing a client needs, and nothing a server should tell."""
    if isinstance(obj, dict):
        return {k: without_paths(v) for k, v in obj.items()
                if not any(str(k).lower().endswith(p) for p in _PATH_KEYS) and not _is_path(v)}
    if isinstance(obj, list):
        return [without_paths(v) for v in obj if not _is_path(v)]
    return obj


def _is_path(v) -> bool:
    return isinstance(v, str) and (v.startswith(("/", "~", "\\")) or (len(v) > 2 and v[1] == ":" and v[2] in "/\\"))


# in the cache key: a graph cached with other fusions is not reused
_OPTIMIZER_TAG = hashlib.sha256(",".join(DISABLED_OPTIMIZERS).encode()).hexdigest()[:8]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """The optimised graphs' directory, made private to this user; None (optimise in memory) when it
    cannot be made, or when others may write to it (a graph put there by someone else must never run)."""
    if cache_dir:
        path = Path(cache_dir)
    else:
        path = Path(os.environ.get("FUSIONCAST_CACHE", Path.home() / ".cache" / "fusioncast")) / "ort"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError as e:  # a read-only home in a container: just optimise in memory
        log.info("not caching the optimised graph: %s", e)
        return None
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    # this user's, or root's (an image built as root, run as another user, as on AWS Lambda)
    if (hasattr(os, "getuid") and st.st_uid not in (os.getuid(), 0)) or others_write:
        log.warning("not using the graph cache %s: it must belong to this user (or root) and be writable by no "
                    "one else (chmod go-w)", path)
        return None
    return path


def _cached_graph(path: Path, source_sha: str) -> bytes | None:
    """The optimised graph at `path` if its record says it was made from the model with `source_sha` and
    its bytes still have the sha256 recorded then; None (and a warning when it was there) otherwise."""
    record = path.with_name(path.name + ".json")
    try:
        data, info = path.read_bytes(), json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the cached graph %s: %s", path, e)
        return None
    if type(info) is dict and info.get("source_sha256") == source_sha and \
            info.get("sha256") == hashlib.sha256(data).hexdigest():
        return data
    log.warning("ignoring the cached graph %s: it is not the one optimised from the verified model "
                "(sha256 %s...); optimising again", path, source_sha[:12])
    return None


def _store_graph(tmp: Path, path: Path, source_sha: str) -> None:
    """Move a freshly optimised graph into the cache with its record (atomic: workers may race here)."""
    record = path.with_name(path.name + ".json")
    tmp_record = tmp.with_name(tmp.name + ".json")
    try:
        tmp_record.write_text(json.dumps({"source_sha256": source_sha, "sha256": sha256_file(tmp)}))
        os.replace(tmp, path)
        os.replace(tmp_record, record)
    except OSError as e:
        log.info("not caching the optimised graph: %s", e)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_record.unlink(missing_ok=True)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Model:
    """onnxruntime session of a bundle's model: inputs by name in, [quantiles (+ interpretation)] out.

    The session runs the bytes whose sha256 was checked (read once: nothing can swap the file between
    the check and the load), or a cached optimised graph made from them. When training calibrated the
    quantiles (calibration=conformal), bundle.json holds the offsets and they are applied here, with
    the same numpy code as in evaluation, so every client gets them.
    """

    def __init__(self, bundle: Bundle, variant: str = "fp32", threads: int = 1, cache_dir: str | None = None,
                 cache: bool = True):
        import onnxruntime as ort  # here, so that importing this module stays cheap

        self.bundle = bundle
        model_path, source_sha = bundle.model_path(variant), bundle.model_info(variant)["sha256"]
        try:
            data = model_path.read_bytes()
        except OSError as e:
            raise BundleError(f"{model_path} cannot be read: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != source_sha:
            raise BundleError(f"{model_path} does not have the sha256 bundle.json gives it ({source_sha})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # no spinning: idle intra-op threads would burn the cores the HTTP event loop needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.loaded_from, cached, tmp = str(model_path), None, None
        root = _cache_dir(cache_dir) if cache else None
        if root is not None:
            cached = root / f"{source_sha}-ort{ort.__version__}-{platform.machine()}-{_OPTIMIZER_TAG}.onnx"
            graph = _cached_graph(cached, source_sha)
            if graph is not None:
                data, self.loaded_from = graph, str(cached)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised already
            else:
                tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                opts.optimized_model_filepath = str(tmp)
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
        except Exception as e:  # onnxruntime's errors for a graph it cannot load are of its own types
            raise BundleError(f"{model_path}: onnxruntime cannot load it as a model: {_first_line(e)}") from None
        if tmp is not None and tmp.is_file():
            _store_graph(tmp, cached, source_sha)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_interpretation = all(n in outputs for n in INTERPRETATION_NAMES)
        try:
            self.calibration = Calibration.from_dict(bundle.meta.get("calibration"))
        except Exception as e:  # a damaged record: one line, naming it
            raise BundleError(f"{bundle.path / META_FILE}: its calibration does not load: {_first_line(e)}") from None
        self._check(model_path)

    def _check(self, model_path: Path) -> None:
        """One call on zero inputs: a graph that does not take this bundle's inputs, or does not give
        (batch, horizon, quantiles), is refused here rather than by the first request."""
        pp = self.bundle.pp
        want = (1, pp.schema.max_prediction_length, len(self.bundle.quantiles))
        try:
            got = self(empty_inputs(pp, 1))[0]
        except Exception as e:
            raise BundleError(f"{model_path} does not run on this bundle's inputs: {_first_line(e)}") from None
        if tuple(np.shape(got)) != want:
            raise BundleError(f"{model_path} gives forecasts of shape {tuple(np.shape(got))}, bundle.json describes "
                              f"{want} (batch, horizon, quantiles)")

    def __call__(self, inputs: dict[str, np.ndarray], interpretation: bool = False) -> list[np.ndarray]:
        """Run on a batch; graph inputs the exporter dropped (zero-width groups) are simply not fed."""
        names = list(OUTPUT_NAMES) + (list(INTERPRETATION_NAMES) if interpretation and self.has_interpretation else [])
        outputs = self.session.run(names, {n: inputs[n] for n in self.input_names})
        if self.calibration is not None:
            outputs[0] = self.calibration.apply(outputs[0], inputs["target_scale"])
        return outputs
