"""Drift detectors with one shape: `fit(reference)`, `score(x)` -> `DriftResult`.

Every test comes from scipy.stats; the detectors only hold the reference and
turn a p-value into a verdict at their significance level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class DriftResult:
    """One signal's test on one window: the verdict is `p_value < threshold`."""

    name: str
    kind: str  # "data" or "concept"
    statistic: float
    p_value: float
    threshold: float  # the significance level the verdict used
    drift: bool
    n: int
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _result(name: str, kind: str, statistic: float, p_value: float, alpha: float, n: int, **details) -> DriftResult:
    p_value = float(np.clip(np.nan_to_num(p_value, nan=1.0), 0.0, 1.0))
    return DriftResult(name, kind, float(statistic), p_value, alpha, p_value < alpha, int(n), details)


class KSDetector:
    """Two-sample Kolmogorov-Smirnov test of one scalar per image against the reference."""

    def __init__(self, name: str, kind: str = "data", alpha: float = 0.05):
        self.name, self.kind, self.alpha = name, kind, alpha

    def fit(self, reference: np.ndarray) -> KSDetector:
        self.reference_ = np.sort(np.asarray(reference, dtype=np.float64).ravel())
        return self

    def score(self, x: np.ndarray) -> DriftResult:
        x = np.asarray(x, dtype=np.float64).ravel()
        test = stats.ks_2samp(self.reference_, x, method="asymp")  # exact mode is slow for n > 10k
        return _result(self.name, self.kind, test.statistic, test.pvalue, self.alpha, len(x),
                       reference_mean=float(self.reference_.mean()), current_mean=float(x.mean()))


class MultiKSDetector:
    """KS test per column (e.g. PCA components), Bonferroni-combined: p = min(1, d * min p_i)."""

    def __init__(self, name: str, kind: str = "data", alpha: float = 0.05):
        self.name, self.kind, self.alpha = name, kind, alpha

    def fit(self, reference: np.ndarray) -> MultiKSDetector:
        self.reference_ = np.asarray(reference, dtype=np.float64)
        return self

    def score(self, x: np.ndarray) -> DriftResult:
        x = np.asarray(x, dtype=np.float64)
        d = self.reference_.shape[1]
        tests = [stats.ks_2samp(self.reference_[:, j], x[:, j], method="asymp") for j in range(d)]
        pvalues = np.array([t.pvalue for t in tests])
        worst = int(np.argmin(pvalues))
        return _result(self.name, self.kind, max(t.statistic for t in tests), min(1.0, d * pvalues[worst]),
                       self.alpha, len(x), dims=d, worst_dim=worst)


class ChiSquareDetector:
    """Chi-squared test that window and reference predicted-class counts share one distribution.

    A two-sample test of homogeneity (`chi2_contingency` on the 2 x C table),
    not goodness of fit to fixed frequencies: the reference frequencies are
    themselves estimates, and treating them as exact fires on clean windows
    as large as the reference. Additive smoothing keeps a class neither side
    predicted (or only one side) from breaking the test.
    """

    def __init__(self, n_classes: int, name: str = "predicted_class", kind: str = "concept",
                 alpha: float = 0.05, smoothing: float = 0.5):
        self.n_classes, self.name, self.kind = n_classes, name, kind
        self.alpha, self.smoothing = alpha, smoothing

    def fit(self, reference: np.ndarray) -> ChiSquareDetector:
        self.counts_ = np.bincount(np.asarray(reference, dtype=np.int64), minlength=self.n_classes)
        self.frequencies_ = self.counts_ / max(self.counts_.sum(), 1)
        return self

    def score(self, x: np.ndarray) -> DriftResult:
        observed = np.bincount(np.asarray(x, dtype=np.int64), minlength=self.n_classes)
        if observed.sum() == 0:
            return _result(self.name, self.kind, 0.0, 1.0, self.alpha, 0)
        table = np.stack([self.counts_, observed]).astype(np.float64) + self.smoothing
        test = stats.chi2_contingency(table, correction=False)
        return _result(self.name, self.kind, test.statistic, test.pvalue, self.alpha, int(observed.sum()),
                       observed_share=(observed / observed.sum()).round(4).tolist(),
                       reference_share=self.frequencies_.round(4).tolist())


class RateDetector:
    """Exact binomial test of a rate (OOD rejections, disagreements) against its expected value."""

    def __init__(self, name: str, kind: str = "data", alpha: float = 0.05, alternative: str = "greater"):
        self.name, self.kind, self.alpha, self.alternative = name, kind, alpha, alternative

    def fit(self, expected_rate: float) -> RateDetector:
        self.expected_rate_ = float(np.clip(expected_rate, 1e-6, 1 - 1e-6))
        return self

    def score(self, x: np.ndarray) -> DriftResult:
        flags = np.asarray(x, dtype=bool)
        k, n = int(flags.sum()), len(flags)
        if n == 0:
            return _result(self.name, self.kind, 0.0, 1.0, self.alpha, 0, expected_rate=self.expected_rate_)
        test = stats.binomtest(k, n, self.expected_rate_, alternative=self.alternative)
        return _result(self.name, self.kind, k / n, test.pvalue, self.alpha, n,
                       expected_rate=self.expected_rate_, count=k)


def holm_adjust(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: reject where adjusted < alpha controls the family-wise error.

    statsmodels is not a dependency; Holm is uniformly more powerful than
    Bonferroni and needs no independence between the signals (they share images).
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


class MMDDetector:
    """Kernel two-sample test (unbiased MMD^2, RBF kernel, median-heuristic bandwidth), permutation p-value.

    The alternative to `MultiKSDetector` for embeddings; bench/drift_power.py
    measures both. O((m + n)^2) per permutation, so the reference is capped.
    """

    def __init__(self, name: str = "embedding_mmd", kind: str = "data", alpha: float = 0.05,
                 n_permutations: int = 200, max_reference: int = 1000, seed: int = 0):
        self.name, self.kind, self.alpha = name, kind, alpha
        self.n_permutations, self.max_reference, self.seed = n_permutations, max_reference, seed

    def fit(self, reference: np.ndarray) -> MMDDetector:
        rng = np.random.default_rng(self.seed)
        reference = np.asarray(reference, dtype=np.float64)
        if len(reference) > self.max_reference:
            reference = reference[rng.choice(len(reference), self.max_reference, replace=False)]
        self.reference_ = reference
        sample = reference[rng.choice(len(reference), min(len(reference), 500), replace=False)]
        distances = np.sqrt(((sample[:, None] - sample[None]) ** 2).sum(-1))
        self.gamma_ = 1.0 / (2 * np.median(distances[distances > 0]) ** 2)
        return self

    def score(self, x: np.ndarray) -> DriftResult:
        from sklearn.metrics.pairwise import rbf_kernel

        x = np.asarray(x, dtype=np.float64)
        m, n = len(self.reference_), len(x)
        kernel = rbf_kernel(np.concatenate([self.reference_, x]), gamma=self.gamma_)
        np.fill_diagonal(kernel, 0.0)  # unbiased estimate: no self-similarity terms
        rng = np.random.default_rng(self.seed)
        masks = np.zeros((self.n_permutations + 1, m + n))
        masks[0, :m] = 1.0  # row 0: the observed split
        for row in masks[1:]:
            row[rng.permutation(m + n)[:m]] = 1.0
        within = masks @ kernel
        k_xx = (within * masks).sum(1)
        k_yy = ((1 - masks) @ kernel * (1 - masks)).sum(1)
        k_xy = (within * (1 - masks)).sum(1)
        stats_ = k_xx / (m * (m - 1)) + k_yy / (n * (n - 1)) - 2 * k_xy / (m * n)
        p_value = (1 + (stats_[1:] >= stats_[0]).sum()) / (1 + self.n_permutations)
        return _result(self.name, self.kind, stats_[0], p_value, self.alpha, n, gamma=self.gamma_)
