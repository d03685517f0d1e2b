"""OpenVINO CPU runtime: export the Predictor's forward function to IR and run it with the same interface.

`export_openvino` converts the one `tf.function` of `ml.inference.Predictor`
(uint8 input, dynamic batch, flip TTA included) to OpenVINO IR: `model.xml` +
`model.bin` (a graph and raw weights, no code runs on load) beside a small
`openvino.json`. `OpenVINOPredictor.load` compiles it for the CPU and answers
`predict` / `predict_batched` exactly like `Predictor`, so serving and
evaluation can use either. `parity` measures how far the two disagree.
OpenVINO's telemetry is replaced by its bundled no-op stub before the first
import: nothing is sent, nothing is prompted, nothing is written to $HOME.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ml.inference import Prediction, empty_prediction, predict_in_batches

log = logging.getLogger(__name__)
XML, BIN, META = "model.xml", "model.bin", "openvino.json"
PRECISIONS = ("f32", "bf16")
# f32 matches TensorFlow to 1e-6; bf16 (AMX / AVX512-BF16 CPUs) costs a fraction of its CPU time but
# rounds, so `check` chooses it per model by what it costs in accuracy and OOD AUROC (choose_precision).
DEFAULT_PRECISION = "f32"
# One synchronous caller: one stream using every core. THROUGHPUT (a stream per core) was up to 2x
# slower per f32 call in bench/runtime.py: a single request then runs on one core.
PERFORMANCE_HINT = "LATENCY"
OUTPUTS = ("probs", "logits", "embeddings")


class RuntimeLoadError(RuntimeError):
    """An exported OpenVINO directory is missing, incomplete or unreadable."""


def _openvino() -> Any:
    """Import openvino with telemetry off: a blocked `openvino_telemetry` makes ovc use its no-op stub."""
    if "openvino" not in sys.modules:
        saved = sys.modules.get("openvino_telemetry")
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import fails -> telemetry_stub
        try:
            import openvino  # noqa: F401
        finally:
            if saved is None:
                sys.modules.pop("openvino_telemetry", None)
            else:
                sys.modules["openvino_telemetry"] = saved
    import openvino as ov

    _silence_telemetry()
    return ov


def _silence_telemetry() -> None:
    """Where openvino was imported by someone else first, point ovc's telemetry at the stub too."""
    import importlib

    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    for name in ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "tm"):
            module.tm = stub


def export_openvino(predictor: Any, directory: str | Path, precision: str = DEFAULT_PRECISION,
                    check: tuple[np.ndarray, np.ndarray] | None = None, outliers: np.ndarray | None = None) -> dict:
    """Convert `predictor`'s forward function to `<directory>/model.xml|bin` + `openvino.json`; return the JSON.

    check: (images, labels), e.g. the val split, and outliers: images of outlier classes training never
    saw. Both precisions are measured against TensorFlow there and bf16 becomes the precision hint only
    if it passes `choose_precision`'s rules (the reason is in `precision_reason`).
    """
    ov = _openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    concrete = predictor._forward.get_concrete_function()  # the exact function every TF forward pass runs
    model = ov.convert_model(concrete)
    for port, name in zip(model.outputs, OUTPUTS, strict=True):
        port.get_tensor().set_names({name})
    # Weights stay float32 on disk; bf16 is a compile-time choice (INFERENCE_PRECISION_HINT).
    ov.save_model(model, directory / XML, compress_to_fp16=False)
    meta = {"format": "openvino-ir", "n_classes": int(predictor.n_classes),
            "embedding_dim": int(predictor.embedding_dim), "tta": bool(predictor.tta),
            "input": {"dtype": "uint8", "shape": [None, 32, 32, 3]}, "outputs": list(OUTPUTS),
            "precision_hint": precision, "openvino_version": ov.__version__}
    (directory / META).write_text(json.dumps(meta, indent=2))
    if check is not None:
        reference = predictor.predict_batched(check[0])  # TensorFlow's outputs, once for both precisions
        meta["checks"] = {p: check_precision(reference, directory, p, *check, outliers=outliers) for p in PRECISIONS}
        meta["precision_hint"], meta["precision_reason"] = choose_precision(meta["checks"])
        (directory / META).write_text(json.dumps(meta, indent=2))
    return meta


def check_precision(reference: Prediction, directory: Path, precision: str, images: np.ndarray,
                    labels: np.ndarray, outliers: np.ndarray | None = None) -> dict:
    """Parity with TensorFlow's outputs on `images` (`reference`), accuracy and (given outliers) the energy
    score's OOD AUROC of the export compiled at one precision."""
    candidate = OpenVINOPredictor.load(directory, precision=precision)
    pred = candidate.predict_batched(images)
    result = compare(reference, pred)
    result |= {"effective_precision": candidate.effective_precision, "meets_parity": meets_parity(result),
               "accuracy": float((pred.probs.argmax(1) == labels).mean()) if len(labels) else 0.0}
    if outliers is not None and len(outliers) and len(images):
        result["ood_auroc"] = energy_auroc(pred.logits, candidate.predict_batched(outliers).logits)
    return result


def energy_auroc(id_logits: np.ndarray, ood_logits: np.ndarray) -> float:
    """AUROC of the energy score (-logsumexp of the logits; higher = more OOD), outliers as positives."""
    from scipy.special import logsumexp
    from sklearn.metrics import roc_auc_score

    scores = -logsumexp(np.concatenate([id_logits, ood_logits]).astype(np.float64), axis=1)
    return float(roc_auc_score(np.r_[np.zeros(len(id_logits)), np.ones(len(ood_logits))], scores))


def choose_precision(checks: dict, max_drop: float = 0.002) -> tuple[str, str]:
    """(precision, why): bf16 when it really runs as bf16 and loses at most 0.2 points of accuracy and of
    held-out OOD AUROC to f32; else f32.

    The parity rule (99.9 % same labels, 2e-3) is the export's test and f32 meets it; reduced precision is
    judged by what it costs instead: 99.9 % agreement would already bound the accuracy change to 0.1
    points, so the 0.2-point rule is only meaningful for a precision that does not match label for label.
    Its parity numbers are still recorded beside the decision.
    """
    bf16, f32 = checks.get("bf16", {}), checks.get("f32", {})
    if bf16.get("effective_precision") != "bf16":
        return "f32", "this CPU runs bf16 requests as f32"
    accuracy_drop = f32.get("accuracy", 0.0) - bf16.get("accuracy", 0.0)
    if accuracy_drop > max_drop:
        return "f32", f"bf16 loses {100 * accuracy_drop:.2f} accuracy points (> {100 * max_drop:.1f})"
    if "ood_auroc" not in bf16 or "ood_auroc" not in f32:
        return "f32", "no held-out outlier images to check bf16's OOD AUROC on"
    auroc_drop = f32["ood_auroc"] - bf16["ood_auroc"]
    if auroc_drop > max_drop:
        return "f32", f"bf16 loses {100 * auroc_drop:.2f} OOD AUROC points (> {100 * max_drop:.1f})"
    return "bf16", (f"bf16 within {100 * max_drop:.1f} points of f32: accuracy {100 * -accuracy_drop:+.2f}, "
                    f"OOD AUROC {100 * -auroc_drop:+.2f} (same labels on {100 * bf16.get('label_agreement', 0):.2f} %)")


def _read_meta(directory: Path) -> dict:
    """The export's JSON, or RuntimeLoadError naming what is missing or wrong."""
    missing = [name for name in (XML, BIN, META) if not (directory / name).is_file()]
    if missing:
        raise RuntimeLoadError(f"{directory} is not an OpenVINO export: missing {', '.join(missing)}")
    try:
        meta = json.loads((directory / META).read_text())
    except ValueError as exc:
        raise RuntimeLoadError(f"{directory / META} is unreadable: {exc}") from exc
    required = ("n_classes", "embedding_dim", "tta", "precision_hint")
    absent = [key for key in required if key not in meta] if isinstance(meta, dict) else list(required)
    if absent:
        raise RuntimeLoadError(f"{directory / META} is unreadable: it lacks {', '.join(absent)}")
    return meta


def compile_config(precision: str, threads: int | None = None, hint: str = PERFORMANCE_HINT) -> dict:
    """CPU plugin properties: precision, performance hint and, when given, the thread count."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVINOPredictor:
    """A compiled OpenVINO export with `ml.inference.Predictor`'s interface; one infer request per thread."""

    def __init__(self, compiled: Any, meta: dict, precision: str):
        self.compiled = compiled
        self.meta = meta
        self.precision = precision
        self.n_classes = int(meta["n_classes"])
        self.embedding_dim = int(meta["embedding_dim"])
        self.tta = bool(meta["tta"])
        # An InferRequest is not re-entrant, but a compiled model serves many: a request per calling
        # thread lets the service's classify threads run forward passes at the same time.
        self._local = threading.local()

    @classmethod
    def load(cls, directory: str | Path, precision: str | None = None, threads: int | None = None,
             hint: str = PERFORMANCE_HINT) -> OpenVINOPredictor:
        """Read and compile `<directory>/model.xml`; precision defaults to the export's hint."""
        directory = Path(directory)
        meta = _read_meta(directory)
        precision = precision or meta["precision_hint"]
        config = compile_config(precision, threads, hint)
        ov = _openvino()
        try:
            core = ov.Core()
            compiled = core.compile_model(core.read_model(directory / XML, directory / BIN), "CPU", config)
        except RuntimeError as exc:  # OpenVINO reports a truncated/garbled IR as RuntimeError
            raise RuntimeLoadError(f"{directory} could not be compiled by OpenVINO: {str(exc)[:300]}") from exc
        if len(compiled.outputs) != len(OUTPUTS):
            raise RuntimeLoadError(f"{directory / XML} has {len(compiled.outputs)} outputs, expected {len(OUTPUTS)}")
        return cls(compiled, meta, precision)

    @property
    def effective_precision(self) -> str:
        """The precision the CPU plugin actually runs ("f32" where a CPU lacks bf16 support)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def predict(self, images: np.ndarray) -> Prediction:
        """One batch of uint8 images (N, 32, 32, 3) -> Prediction (float32 arrays)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"expected images of shape (N, 32, 32, 3), got {images.shape}")
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        if len(images) == 0:
            return empty_prediction(self.n_classes, self.embedding_dim)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer([np.ascontiguousarray(images)], share_inputs=False)
        outs = [np.array(results[port], dtype=np.float32, copy=True) for port in self.compiled.outputs]
        return Prediction(*outs)

    def predict_batched(self, images: np.ndarray, batch_size: int = 512, progress: bool = False) -> Prediction:
        """Large arrays in fixed-size batches (bounded memory), with an optional tqdm bar."""
        return predict_in_batches(self, images, batch_size, progress)


def parity(reference: Any, candidate: Any, images: np.ndarray, batch_size: int = 256) -> dict:
    """How far `candidate` strays from `reference` on `images`: label agreement and max |prob| difference."""
    return compare(reference.predict_batched(images, batch_size=batch_size),
                   candidate.predict_batched(images, batch_size=batch_size))


def compare(ref: Prediction, got: Prediction) -> dict:
    """Label agreement, max |prob| and |logit| differences and min embedding cosine of two outputs."""
    emb_cos = np.sum(ref.embeddings * got.embeddings, 1) / (
        np.linalg.norm(ref.embeddings, axis=1) * np.linalg.norm(got.embeddings, axis=1) + 1e-12)
    return {"n": int(len(ref)),
            "label_agreement": float(np.mean(ref.probs.argmax(1) == got.probs.argmax(1))) if len(ref) else 1.0,
            "max_prob_diff": float(np.abs(ref.probs - got.probs).max(initial=0.0)),
            "max_logit_diff": float(np.abs(ref.logits - got.logits).max(initial=0.0)),
            "min_embedding_cosine": float(emb_cos.min(initial=1.0))}


def meets_parity(result: dict, min_agreement: float = 0.999, max_prob_diff: float = 2e-3) -> bool:
    """The acceptance rule: same label on >= 99.9 % of images and probabilities within 2e-3."""
    return result["label_agreement"] >= min_agreement and result["max_prob_diff"] <= max_prob_diff


def serving_predictor(directory: str | Path, runtime: str = "auto",
                      threads: int | None = None) -> OpenVINOPredictor | None:
    """The OpenVINO predictor serving should use, or None for TensorFlow (logged when it is a fallback).

    auto: the export when the run has one; openvino: the export, warning when it is absent; tensorflow: never.
    """
    directory = Path(directory)
    if runtime == "tensorflow" or (runtime == "auto" and not directory.is_dir()):
        return None
    try:
        predictor = OpenVINOPredictor.load(directory, threads=threads or None)
    except (RuntimeLoadError, ImportError, ValueError) as exc:
        log.warning("OpenVINO runtime unavailable, falling back to TensorFlow: %s", exc)
        return None
    log.info("forward pass: OpenVINO %s from %s", predictor.effective_precision, directory)
    return predictor
