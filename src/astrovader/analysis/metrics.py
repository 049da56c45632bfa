"""Clustering metrics: against known classes (Hungarian-matched accuracy, NMI, ARI, purity) and without
them (the paper's Table 2 occupancies, simplified silhouette, Calinski-Harabasz, the Figure 5 overlap matrix)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from astrovader.data.noise import border_pixels
from astrovader.errors import InputError


def contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts[i, j] of predicted cluster i and true class j, with the label values of rows and columns."""
    true, pred = np.asarray(true), np.asarray(pred)
    classes, ti = np.unique(true, return_inverse=True)
    clusters, pi = np.unique(pred, return_inverse=True)
    counts = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(counts, (pi, ti), 1)
    return counts, clusters, classes


def hungarian_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (unmatched clusters count as
    wrong, so K > number of classes is penalised; use purity for many-to-one)."""
    counts, _, _ = contingency(true, pred)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / max(len(np.asarray(true)), 1))


def purity(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of objects that belong to their cluster's majority class (many-to-one matching)."""
    counts, _, _ = contingency(true, pred)
    return float(counts.max(axis=1).sum() / max(len(np.asarray(true)), 1))


def clustering_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    true, pred = np.asarray(true), np.asarray(pred)
    return {
        "accuracy": hungarian_accuracy(true, pred),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
        "purity": purity(true, pred),
    }


# --------------------------------------------------------------------------------------------------
# Unsupervised cluster statistics (the paper's Table 2 and Figure 5)
# --------------------------------------------------------------------------------------------------
def cluster_centroids(latents: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean latent vector of each occupied cluster, with the cluster labels in the same order.

    Empty components have no centroid: including a GMM mean that no object uses would make b(i) smaller
    for nobody's benefit and would not describe the sample."""
    latents, labels = np.asarray(latents, dtype=np.float64), np.asarray(labels)
    present = np.unique(labels)
    cents = np.stack([latents[labels == c].mean(0) for c in present]) if len(present) else np.zeros((0, 0))
    return cents, present


def simplified_silhouette_samples(latents: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Simplified silhouette of every object: a = distance to its own cluster's centroid, b = distance to
    the nearest other centroid, s = (b - a) / max(a, b).

    The centroid form costs O(N K) instead of the full silhouette's O(N^2), so it scales to the paper's
    41,100-object test set. With fewer than two occupied clusters s is defined as 0 (nothing to compare)."""
    latents, labels = np.asarray(latents, dtype=np.float64), np.asarray(labels)
    cents, present = cluster_centroids(latents, labels)
    if len(present) < 2:
        return np.zeros(len(labels))
    from scipy.spatial.distance import cdist

    d = cdist(latents, cents)  # (N, K_present): memory O(N K), not O(N K J)
    own = np.searchsorted(present, labels)
    a = d[np.arange(len(labels)), own]
    d[np.arange(len(labels)), own] = np.inf
    b = d.min(1)
    denom = np.maximum(a, b)
    return np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)


def simplified_silhouette(latents: np.ndarray, labels: np.ndarray) -> float:
    """Mean simplified silhouette over the whole sample (the paper reports about -0.1)."""
    s = simplified_silhouette_samples(latents, labels)
    return float(s.mean()) if len(s) else float("nan")


def calinski_harabasz(latents: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's Calinski-Harabasz index, NaN where it is undefined (one cluster, or one object per cluster)
    so that a report on a degenerate model still renders instead of failing."""
    from sklearn.metrics import calinski_harabasz_score

    labels = np.asarray(labels)
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    return float(calinski_harabasz_score(np.asarray(latents, dtype=np.float64), labels))


def occupancy_table(probs: np.ndarray, cuts: tuple[float, ...] | list[float] = (0.1, 0.5, 0.9),
                    latents: np.ndarray | None = None) -> pd.DataFrame:
    """The paper's Table 2: one row per component plus a final ``all`` row.

    Columns: ``n_max`` (objects whose most probable component it is), ``n_p>CUT`` (objects whose normalised
    probability for the component exceeds CUT; an object can count in several components, which is what
    shows the overlap), and with ``latents`` the mean simplified silhouette of the component's members.
    The ``all`` row holds the sample size, the number of objects with *any* probability above each cut,
    and the whole-sample silhouette."""
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    labels = probs.argmax(1) if n else np.zeros(0, dtype=np.int64)
    rows: dict[str, list] = {"component": [*[str(c) for c in range(k)], "all"]}
    rows["n_max"] = [*np.bincount(labels, minlength=k).tolist(), n]
    for cut in cuts:
        above = probs > cut
        rows[f"n_p>{cut:g}"] = [*above.sum(0).astype(int).tolist(), int(above.any(1).sum())]
    if latents is not None:
        s = simplified_silhouette_samples(latents, labels)
        per = [float(s[labels == c].mean()) if np.any(labels == c) else float("nan") for c in range(k)]
        rows["silhouette"] = [*per, float(s.mean()) if n else float("nan")]
    return pd.DataFrame(rows)


def overlap_matrix(probs: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """K x K matrix whose row c is the mean probability vector of the members of component c (Figure 5).

    Rows sum to one; the diagonal says how confidently members belong to their own component and the
    off-diagonal mass which components they are confused with. Rows of empty components are NaN."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    labels = probs.argmax(1) if labels is None else np.asarray(labels)
    out = np.full((k, k), np.nan)
    for c in range(k):
        m = labels == c
        if m.any():
            out[c] = probs[m].mean(0)
    return out


def secondary_labels(probs: np.ndarray, non_morphological: tuple[int, ...] | list[int]) -> pd.DataFrame:
    """Secondary morphological component for every object, from probabilities renormalised over the
    components *not* marked non-morphological (Figure 8).

    In the paper some components gather galaxies by a companion's position rather than by shape; the
    remaining (morphological) components still rank the galaxy's own shape. Columns: ``primary``,
    ``secondary`` and ``secondary_prob`` (renormalised)."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    nm = sorted({int(c) for c in non_morphological})
    if any(c < 0 or c >= k for c in nm):
        raise InputError(f"non-morphological components must be in 0..{k - 1}, got {nm}")
    keep = np.array([c for c in range(k) if c not in nm], dtype=np.int64)
    if len(keep) == 0:
        raise InputError("every component is marked non-morphological; nothing is left to rank shape")
    sub = probs[:, keep]
    total = sub.sum(1, keepdims=True)
    renorm = np.divide(sub, total, out=np.full_like(sub, 1.0 / len(keep)), where=total > 0)
    j = renorm.argmax(1)
    return pd.DataFrame({"primary": probs.argmax(1), "secondary": keep[j],
                         "secondary_prob": renorm[np.arange(len(j)), j]})


# --------------------------------------------------------------------------------------------------
# Galaxy Zoo vote-fraction classes (Figures 13-14)
# --------------------------------------------------------------------------------------------------
GZ_DEFAULT_CUTS: dict[str, float] = {"total_votes": 20, "smooth": 0.430, "featured": 0.430, "artifact": 0.430,
                                     "edge_on": 0.715, "bar": 0.8}


def find_column(columns: list[str] | pd.Index, *stems: str) -> str | None:
    """First catalogue column named like one of ``stems`` (exact, then ``STEM_debiased``, then any column
    that contains the stem and ``debiased``), so both short and Hart et al. (2016) style names work."""
    cols = [str(c) for c in columns]
    low = {c.lower(): c for c in cols}
    for stem in stems:
        for cand in (f"{stem}_debiased", stem, f"{stem}_fraction_debiased"):
            if cand.lower() in low:
                return low[cand.lower()]
    for stem in stems:
        for c in cols:
            if stem.lower() in c.lower() and "debiased" in c.lower():
                return c
    return None


def gz_vote_classes(catalog: pd.DataFrame, cuts: dict[str, float] | None = None) -> pd.DataFrame | None:
    """Clean-sample Galaxy Zoo classes from debiased vote fractions, or None if the catalogue lacks them.

    Follows the authors' script: objects with more than ``total_votes`` votes; ``smooth`` / ``featured`` when
    that fraction exceeds its cut; ``edge_on`` / ``not_edge_on`` among featured galaxies by the edge-on
    fraction (which is only meaningful for discs). Columns are booleans; unclassified objects are all False."""
    c = {**GZ_DEFAULT_CUTS, **(cuts or {})}
    cols = catalog.columns
    smooth = find_column(cols, "smooth", "t01_smooth_or_features_a01_smooth")
    featured = find_column(cols, "featured", "features_or_disk", "t01_smooth_or_features_a02_features_or_disk")
    if smooth is None or featured is None:
        return None
    edge = find_column(cols, "edge_on", "edgeon", "t02_edgeon_a04_yes")
    votes = next((n for n in ("total_votes", "total_classifications", "total_count") if n in cols), None)
    ok = (catalog[votes].to_numpy(dtype=float) > c["total_votes"]) if votes else np.ones(len(catalog), bool)
    sm = ok & (catalog[smooth].to_numpy(dtype=float) > c["smooth"])
    ft = ok & (catalog[featured].to_numpy(dtype=float) > c["featured"])
    out = pd.DataFrame({"smooth": sm, "featured": ft})
    if edge is not None:
        e = catalog[edge].to_numpy(dtype=float)
        out["edge_on"] = ft & (e > c["edge_on"])
        out["not_edge_on"] = ft & ~(e > c["edge_on"])
    return out


def sky_noise_variance(images: np.ndarray) -> float:
    """Median over ``images`` (uint8 (N, C, H, W)) of the sigma-clipped variance of their 2-pixel border, in stored
    units / 255: the part of every pixel that no reconstruction can predict, the floor of the reconstruction MSE."""
    from astropy.stats import sigma_clipped_stats

    imgs = np.asarray(images, np.float64).mean(1) / 255.0
    return (float(np.median([sigma_clipped_stats(b, sigma=3.0)[2] ** 2 for b in border_pixels(imgs, 2)]))
            if len(imgs) else float("nan"))


# (name in words, what it measures and what a good value looks like) for every key of metrics.json
METRIC_WORDS: dict[str, tuple[str, str]] = {
    "rows": ("galaxies analysed", "which rows of the dataset every number below comes from"),
    "n_objects": ("number of galaxies", ""),
    "n_components": ("mixture components K", ""),
    "latent_dim": ("latent dimensions J", ""),
    "mean_recon_mse": ("mean reconstruction error", "mean squared difference per pixel between input and "
                       "reconstruction, pixels scaled to [0, 1]; read it against the sky-noise variance below"),
    "median_recon_mse": ("median reconstruction error", "as above, less sensitive to a few bad images"),
    "sky_noise_variance": ("sky-noise variance", "variance of the stamps' border pixels (sigma-clipped), pixels "
                           "scaled to [0, 1]: what no model can reproduce, the floor of the reconstruction error"),
    "recon_mse_over_noise": ("reconstruction error / sky noise", "mean reconstruction error over the sky-noise "
                             "variance: ~1 is at the noise floor (only noise is missed), well above 1 means galaxy "
                             "structure is missed"),
    "simplified_silhouette": ("simplified silhouette", "separation of the components in latent space, from -1 to "
                              "1; above 0.25 the components are distinct, near 0 they touch"),
    "calinski_harabasz": ("Calinski-Harabasz index", "between- over within-component spread of the latent means; "
                          "higher is better, only comparable between models of one dataset"),
    "occupied_components": ("components with members", "components that are some galaxy's most probable; "
                            "fewer than K means unused components"),
    "non_morphological": ("not morphological", "components flagged as grouped by companions or orientation "
                          "(automatically, or as given with --non-morphological)"),
    "label_column": ("label column", "the catalogue column the components are compared with"),
    "label_accuracy": ("accuracy", "share of galaxies in their component's class after the best one-to-one "
                       "matching of components to classes; 1 is perfect"),
    "label_nmi": ("normalised mutual information", "0 when the components say nothing about the labels, 1 when "
                  "they determine them"),
    "label_ari": ("adjusted Rand index", "pairwise agreement with the labels corrected for chance; 0 chance, 1 "
                  "perfect"),
    "label_purity": ("purity", "share of galaxies in their component's majority class; 1 is perfect, rises with K"),
    "realism_classifier_accuracy": ("synthetic vs real: classifier accuracy", "a small CNN trained to tell "
                                    "synthetic (with sky noise) from held-out real galaxies, on galaxies it did "
                                    "not see; 0.5 means it cannot tell them apart"),
    "realism_memorised_share": ("synthetic galaxies that copy a training galaxy", "share closer to a training "
                                "galaxy than the 1st percentile of real galaxies' distances to theirs"),
    "realism_worst_w1_ratio": ("worst morphology mismatch", "largest Wasserstein distance, synthetic against "
                               "real, over the real-against-real one, among the measured parameters; near 1 is "
                               "as close as two halves of the real galaxies"),
}
