"""Choosing the number of mixture components K from a trained model's latent space.

The paper (section 4) fits a Dirichlet-process Bayesian Gaussian mixture with many components and a small
weight-concentration prior to random mini-batches of latent means: the prior pushes unneeded components
towards zero weight, so counting the components above a weight threshold estimates K. Refitting on many
mini-batches and taking the mode makes the estimate robust to any one unlucky batch or local optimum.
A sweep of conventional indices (Calinski-Harabasz, simplified silhouette, GMM log-likelihood / BIC for a
range of K) is offered beside it, as C20 used, since no single criterion is reliable on overlapping data.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.analysis.metrics import calinski_harabasz, simplified_silhouette
from astrovader.errors import InputError


@dataclass
class ChooseKResult:
    """Outcome of :func:`choose_k`: the K found on each mini-batch, its mode, and the fitted weights."""

    counts: np.ndarray  # (repeats,) components above threshold in each fit
    weights: np.ndarray  # (repeats, max_components) sorted mixture weights of each fit
    threshold: float
    consensus: int = field(init=False)

    def __post_init__(self) -> None:
        c = Counter(self.counts.tolist())
        top = max(c.values())
        self.consensus = int(min(k for k, v in c.items() if v == top))  # ties: the simpler model

    def distribution(self) -> dict[int, int]:
        """How many fits found each K, in increasing K."""
        return dict(sorted(Counter(self.counts.tolist()).items()))


def choose_k(latents: np.ndarray, *, max_components: int = 20, repeats: int = 20, batch: int = 2000,
             threshold: float = 0.02, weight_concentration_prior: float = 1e-3, seed: int = 0,
             covariance_type: str = "full", max_iter: int = 500, progress: bool = False) -> ChooseKResult:
    """Estimate K with Dirichlet-process Bayesian GMMs on ``repeats`` random mini-batches of ``latents``.

    Works on any (N, J) array (latent means of a model, or anything else), so it can be checked on data
    with a known number of clusters. Latents are standardised first so that no one latent dimension's
    scale decides the answer. Covariances are full by default (sklearn's default, which the paper's fits used):
    clusters of a VaDE latent space are often elongated, and diagonal components (``"diag"``, faster) then
    need several components per cluster."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"latents must be an (N, J) array with N >= 2, got shape {x.shape}")
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    rng = np.random.default_rng(seed)
    m = min(batch, len(x))
    n_comp = max(1, min(max_components, m))
    counts, weights = [], []
    it = range(repeats)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="choose-k", unit="fit")
    for r in it:
        sub = x[rng.choice(len(x), m, replace=False)]
        bgm = BayesianGaussianMixture(n_components=n_comp, weight_concentration_prior_type="dirichlet_process",
                                      weight_concentration_prior=weight_concentration_prior,
                                      covariance_type=covariance_type, max_iter=max_iter, init_params="k-means++",
                                      random_state=int(rng.integers(2**31 - 1)) + r, reg_covar=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            bgm.fit(sub)
        w = np.sort(bgm.weights_)[::-1]
        counts.append(int((w > threshold).sum()))
        weights.append(np.pad(w, (0, max_components - len(w))))
    return ChooseKResult(np.asarray(counts), np.asarray(weights), threshold)


def sweep_k(latents: np.ndarray, ks: list[int] | range, *, max_points: int = 5000, seed: int = 0,
            covariance_type: str = "full") -> pd.DataFrame:
    """Conventional indices for a range of K with sklearn's GaussianMixture on (a subsample of) the latents:
    Calinski-Harabasz (higher is better), mean simplified silhouette (higher), mean log-likelihood per
    object and BIC (lower). Meant to be read together, not as one automatic answer."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(latents, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    rows = []
    for k in ks:
        if k < 1 or k > len(x):
            continue
        gm = GaussianMixture(k, covariance_type=covariance_type, n_init=2, random_state=seed, reg_covar=1e-5).fit(x)
        lab = gm.predict(x)
        rows.append({"k": int(k), "calinski_harabasz": calinski_harabasz(x, lab),
                     "silhouette": simplified_silhouette(x, lab), "log_likelihood": float(gm.score(x)),
                     "bic": float(gm.bic(x))})
    return pd.DataFrame(rows)


def plot_choose_k(result: ChooseKResult, out: str | Path, sweep: pd.DataFrame | None = None) -> Path:
    """Histogram of the K found per mini-batch (consensus highlighted), the sorted weights of every fit
    against the threshold, and the sweep's indices when given."""
    from matplotlib.ticker import MaxNLocator

    from astrovader.analysis.figures import save_figure, subplots

    n_panels = 2 + (0 if sweep is None or sweep.empty else 3)
    fig, axes = subplots(1, n_panels, figsize=(4.6 * n_panels, 3.8), squeeze=False)
    ax = axes[0, 0]
    dist = result.distribution()
    ks = np.arange(min(dist) - 1, max(dist) + 2)
    heights = [dist.get(int(k), 0) for k in ks]
    colors = ["tab:red" if k == result.consensus else "tab:blue" for k in ks]
    ax.bar(ks, heights, color=colors, edgecolor="black", width=0.8)
    ax.set_xticks(ks)
    ax.set_xlabel(f"components with weight > {result.threshold:g}")
    ax.set_ylabel("mini-batch fits")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Dirichlet-process GMM: consensus K = {result.consensus}")
    ax = axes[0, 1]
    idx = np.arange(1, result.weights.shape[1] + 1)
    for w in result.weights:
        ax.plot(idx, np.maximum(w, 1e-6), color="tab:blue", alpha=0.35, lw=1)
    ax.axhline(result.threshold, color="tab:red", ls="--", label=f"threshold {result.threshold:g}")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.2)
    ax.set_xlabel("component (sorted by weight)")
    ax.set_ylabel("mixture weight")
    ax.set_title("Fitted weights, every mini-batch")
    ax.legend(fontsize=8)
    if sweep is not None and not sweep.empty:
        for ax, col, label in zip(axes[0, 2:], ("calinski_harabasz", "silhouette", "bic"),
                                  ("Calinski-Harabasz (higher better)", "simplified silhouette (higher better)",
                                   "BIC (lower better)"), strict=True):
            ax.plot(sweep["k"], sweep[col], "o-", color="black")
            ax.set_xlabel("K")
            ax.set_title(label, fontsize=10)
            ax.set_xticks(sweep["k"])
    fig.tight_layout()
    return save_figure(fig, out)
