"""Clustering metrics against known classes (Hungarian-matched accuracy, NMI, ARI, purity)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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
