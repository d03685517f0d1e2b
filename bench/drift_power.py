"""Detection power and false-alarm rate of the drift verdict on real images and a trained model.

Run from the repo root: `.venv/bin/python bench/drift_power.py [--run-id RUN]`
(default: the champion of MLFLOW_TRACKING_URI). The run's validation split is
cut in two: half A builds the reference pack (as `ml.stages.reference.reference` does),
half B is the clean traffic. Model outputs are computed once per image set
(clean, each corruption x severity, OOD), then windows are sampled from them.
Shifts: Gaussian noise, blur, brightness, contrast (CIFAR-10-C parameters,
severities 1-5), a class-prior shift, OOD contamination from
../shared/datasets/ood_dev.tar.gz. Baseline: KS on each image's mean pixel
value. The last line is JSON: false_alarm_rate and power (shift -> window
size -> detection rate).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml import imaging  # noqa: E402
from ml.config import Settings  # noqa: E402
from ml.monitoring import signals  # noqa: E402
from ml.monitoring.reference import ReferencePack  # noqa: E402
from ml.monitoring.signals import WindowData  # noqa: E402

# CIFAR-10-C (Hendrycks & Dietterich) parameters per severity 1-5.
SEVERITY = {"gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10), "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
            "brightness": (0.05, 0.1, 0.15, 0.2, 0.3), "contrast": (0.75, 0.5, 0.4, 0.3, 0.15)}
OOD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def corrupt(x: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One CIFAR-10-C style corruption of uint8 images (N, 32, 32, 3)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
    from scipy.ndimage import gaussian_filter

    c = SEVERITY[kind][severity - 1]
    f = x.astype(np.float32) / 255.0
    if kind == "gaussian_noise":
        f = f + rng.normal(0, c, f.shape)
    elif kind == "gaussian_blur":
        f = gaussian_filter(f, sigma=(0, c, c, 0))
    elif kind == "brightness":
        hsv = rgb_to_hsv(f)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        f = hsv_to_rgb(hsv)
    elif kind == "contrast":
        mean = f.mean(axis=(1, 2, 3), keepdims=True)
        f = (f - mean) * c + mean
    return np.clip(np.rint(f * 255), 0, 255).astype(np.uint8)


def ood_images(path: Path) -> np.ndarray:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg", ".png"))]
        return np.stack([imaging.to_model_input(imaging.decode_image(tar.extractfile(m).read())) for m in members])


def resolve_run(settings: Settings, run_id: str | None) -> str:
    if run_id:
        return run_id
    from ml.stages import tracking

    version = tracking.champion_version(settings)
    if version is None:
        raise SystemExit("no champion in the registry: pass --run-id")
    return tracking.run_id_of_version(settings, version)


def ood_gate(settings: Settings, run_id: str):
    """The run's default OOD detector as images+outputs -> is_ood, or None when the run logged none."""
    try:
        from ml.ood.base import OODFeatures
        from ml.ood.persist import load_default_detector
        from ml.stages import tracking

        directory = tracking.download(settings, run_id, "bundle/ood", tempfile.mkdtemp())
        detector = load_default_detector(directory)
    except Exception as exc:  # noqa: BLE001 - any failure means: no detector to use
        print(f"no OOD detector in run {run_id} ({type(exc).__name__}); using a max-softmax gate", file=sys.stderr)
        return None
    return lambda x, out: detector.score(OODFeatures.from_prediction(
        out, x if detector.needs_pixels else None)).is_ood


def featurize(predictor, x: np.ndarray, class_hists: np.ndarray, gate, conf_cut: float | None) -> dict:
    """Everything a logged request carries, for each image of x."""
    out = predictor.predict_batched(x)
    predicted = out.probs.argmax(1)
    confidence = out.probs.max(1)
    is_ood = gate(x, out) if gate else confidence < conf_cut
    return {"confidence": confidence, "pixel_entropy": imaging.pixel_entropy(x), "predicted": predicted,
            "hist_distance": imaging.histogram_distance(imaging.intensity_histograms(x), class_hists, predicted),
            "is_ood": np.asarray(is_ood, bool), "embeddings": out.embeddings.astype(np.float16).astype(np.float32),
            "pixel_mean": x.reshape(len(x), -1).mean(1), "probs": out.probs, "out": out}


def window(sets: list[tuple[dict, np.ndarray]]) -> tuple[WindowData, np.ndarray]:
    """A window from (feature set, indices) parts, plus the baseline's per-image pixel means."""
    def cat(name):
        return np.concatenate([f[name][i] for f, i in sets])

    n = sum(len(i) for _, i in sets)
    return WindowData(cat("confidence"), cat("pixel_entropy"), cat("hist_distance"), cat("predicted"),
                      cat("is_ood"), cat("embeddings"), [str(k) for k in range(n)]), cat("pixel_mean")


class Judge:
    """Runs the production verdict and the baseline on a window; tallies detections per setting."""

    def __init__(self, pack: ReferencePack, ref_pixel_mean: np.ndarray, alpha: float):
        from ml.monitoring.detectors import KSDetector, MMDDetector

        self.pack, self.alpha = pack, alpha
        self.baseline = KSDetector("pixel_mean", alpha=alpha).fit(ref_pixel_mean)
        self.hits: dict = {}
        self.mmd = MMDDetector(alpha=alpha, n_permutations=100).fit(pack.embeddings_pca)
        self.mmd_hits: dict = {}
        self.seconds = {"ks_pca": 0.0, "mmd": 0.0, "ks_pca_n": 0, "mmd_n": 0}

    def judge(self, name: str, size: int, data: WindowData, pixel_mean: np.ndarray) -> None:
        results = signals.compute_signals(data, self.pack, self.alpha)
        verdict, rows = signals.verdict(results, self.alpha, len(data), min_window=1)
        tally = self.hits.setdefault(name, {}).setdefault(size, {"n": 0, "drift": 0, "baseline": 0, "signals": {}})
        tally["n"] += 1
        tally["drift"] += verdict == signals.DRIFT
        tally["baseline"] += self.baseline.score(pixel_mean).drift
        for row in rows:
            tally["signals"][row["name"]] = tally["signals"].get(row["name"], 0) + row["drift"]

    def compare_embedding_tests(self, name: str, data: WindowData) -> None:
        """The embedding signal two ways on the same window: KS per PCA component (Bonferroni) and MMD."""
        from ml.monitoring.detectors import MultiKSDetector

        projected = self.pack.pca_transform(data.embeddings)
        tally = self.mmd_hits.setdefault(name, {"n": 0, "ks_pca": 0, "mmd": 0})
        for key, detector in (("ks_pca", MultiKSDetector("e", alpha=self.alpha).fit(self.pack.embeddings_pca)),
                              ("mmd", self.mmd)):
            start = time.perf_counter()
            tally[key] += detector.score(projected).drift
            self.seconds[key] += time.perf_counter() - start
            self.seconds[f"{key}_n"] += 1
        tally["n"] += 1

    def rates(self, key: str) -> dict:
        return {name: {str(size): round(t[key] / t["n"], 3) for size, t in sizes.items()}
                for name, sizes in self.hits.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="training run (default: the registered champion)")
    parser.add_argument("--windows", type=int, default=50, help="windows per shifted setting and size")
    parser.add_argument("--clean-windows", type=int, default=100)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--ood-archive", default=str(REPO.parent / "shared" / "datasets" / "ood_dev.tar.gz"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features-cache", help="pickle of the model outputs per image set, reused when present")
    parser.add_argument("--mmd-windows", type=int, default=10, help="windows per setting at size 200 for KS vs MMD")
    return parser.parse_args()


def build_sets(settings: Settings, run_id: str, ood_archive: Path, rng: np.random.Generator) -> dict:
    """Reference pack from half A of the validation split; features of half B, its corruptions and OOD."""
    from ml.inference import Predictor
    from ml.stages import snapshots, tracking

    version = tracking.dataset_version_of_run(settings, run_id)
    x_val, y_val = snapshots.split(settings, version, "val")
    x_train, y_train = snapshots.split(settings, version, "train")
    class_hists = imaging.class_mean_histograms(x_train, y_train, len(settings.classes))
    order = rng.permutation(len(x_val))
    part_a, part_b = order[: len(order) // 2], order[len(order) // 2:]
    predictor, gate = Predictor(tracking.load_run_model(settings, run_id)), ood_gate(settings, run_id)
    ref = featurize(predictor, x_val[part_a], class_hists, gate, -1.0)
    conf_cut = None if gate else float(np.quantile(ref["confidence"], 1 - settings.ood_target_tpr))
    if not gate:
        ref["is_ood"] = ref["confidence"] < conf_cut
    pack = ReferencePack.from_outputs(x_val[part_a], y_val[part_a], ref["probs"], ref["out"].embeddings,
                                      class_hists, list(settings.classes), float(ref["is_ood"].mean()))
    x_b = x_val[part_b]
    return {"version": version, "pack": pack, "ref": ref, "y_b": y_val[part_b], "gate": gate,
            "clean": featurize(predictor, x_b, class_hists, gate, conf_cut),
            "shifted": {f"{kind}_{sev}": featurize(predictor, corrupt(x_b, kind, sev, rng), class_hists, gate,
                                                   conf_cut) for kind in SEVERITY for sev in range(1, 6)},
            "ood": featurize(predictor, ood_images(ood_archive), class_hists, gate, conf_cut)}


def simulate(judge: Judge, sets: dict, sizes: list[int], args: argparse.Namespace, rng: np.random.Generator) -> None:
    """Sample windows from the precomputed features and judge each one."""
    clean, ood, y_b = sets["clean"], sets["ood"], sets["y_b"]
    n_b, n_ood = len(y_b), len(ood["confidence"])
    boosted = rng.choice(len(judge.pack.classes), size=3, replace=False)
    prior = np.where(np.isin(y_b, boosted), 4.0, 1.0)
    prior /= prior.sum()
    for size in sizes:
        if size > n_b:
            print(f"skipping window size {size}: only {n_b} clean images", file=sys.stderr)
            continue
        for _ in range(args.clean_windows):
            judge.judge("clean", size, *window([(clean, rng.choice(n_b, size, replace=False))]))
        for i in range(args.windows):
            for name, feats in [("clean", clean), *sets["shifted"].items()]:
                data, pixel_mean = window([(feats, rng.choice(n_b, size, replace=False))])
                if name != "clean":
                    judge.judge(name, size, data, pixel_mean)
                if size == 200 and i < args.mmd_windows:
                    judge.compare_embedding_tests(name, data)
            judge.judge("class_prior", size, *window([(clean, rng.choice(n_b, size, replace=False, p=prior))]))
            for frac in OOD_FRACTIONS:
                k = int(round(frac * size))
                parts = [(clean, rng.choice(n_b, size - k, replace=False)),
                         (ood, rng.choice(n_ood, k, replace=k > n_ood))]
                judge.judge(f"ood_{int(frac * 100)}pct", size, *window(parts))


def report(judge: Judge, sets: dict, run_id: str, settings: Settings, features_s: float, total_s: float) -> dict:
    """The JSON summary: false alarms, power per shift and window size, the baseline and per-signal detail."""
    detection, baseline = judge.rates("drift"), judge.rates("baseline")
    false_alarm = detection.pop("clean")
    mmd = {"rates": {k: {m: round(v[m] / v["n"], 3) for m in ("ks_pca", "mmd")} for k, v in judge.mmd_hits.items()},
           "seconds_per_window": {m: round(judge.seconds[m] / max(judge.seconds[f"{m}_n"], 1), 4)
                                  for m in ("ks_pca", "mmd")}}
    for name, rates in [("clean", false_alarm), *detection.items()]:
        print(f"{name:<18} " + "  ".join(f"n={s}: {r:.2f}" for s, r in rates.items()), file=sys.stderr)
    return {"run_id": run_id, "dataset_version": sets["version"], "val_accuracy": sets["pack"].meta["val_accuracy"],
            "reference_images": len(sets["ref"]["confidence"]), "clean_images": len(sets["y_b"]),
            "ood_images": len(sets["ood"]["confidence"]), "alpha": settings.drift_alpha,
            "ood_gate": "bundle/ood default detector" if sets["gate"] else "max-softmax at the target TPR",
            "false_alarm_rate": false_alarm, "power": detection,
            "baseline_pixel_mean_ks": {"false_alarm_rate": baseline.pop("clean"), "power": baseline},
            "power_by_signal_at_200": {name: {sig: round(hits / t[200]["n"], 3) for sig, hits in
                                              t[200]["signals"].items()} for name, t in judge.hits.items() if 200 in t},
            "embedding_test_at_200": mmd, "features_s": round(features_s, 1), "total_s": round(total_s, 1)}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    settings = Settings.from_env()
    rng = np.random.default_rng(args.seed)
    run_id = resolve_run(settings, args.run_id)
    cache = Path(args.features_cache) if args.features_cache else None
    if cache and cache.is_file():  # re-running the window sampling needs no forward passes
        sets = pickle.loads(cache.read_bytes())
    else:
        sets = build_sets(settings, run_id, Path(args.ood_archive), rng)
        for part in (sets["ref"], sets["clean"], sets["ood"], *sets["shifted"].values()):
            part.pop("out", None)
        sets["gate"] = sets["gate"] is not None
        if cache:
            cache.write_bytes(pickle.dumps(sets))
    features_s = time.perf_counter() - started
    judge = Judge(sets["pack"], sets["ref"]["pixel_mean"], settings.drift_alpha)
    simulate(judge, sets, [int(s) for s in args.sizes.split(",")], args, rng)
    print(json.dumps(report(judge, sets, run_id, settings, features_s, time.perf_counter() - started)))


if __name__ == "__main__":
    main()
