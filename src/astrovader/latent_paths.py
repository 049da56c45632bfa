"""Latent-space exploration (paper section 5.3, Figures 10-12), without any plotting: the shortest route through
the components' most probable members and the interpolation along it, the traversal of each latent variable, and
deblending by interpolation. Figures of these live in :mod:`astrovader.analysis.explore_figures`.

Everything here works from a trained network and the :class:`~astrovader.inference.Predictions` of a real
dataset (latent means, probabilities, reconstruction errors), computed once by the inference path or read from
an ``astrovader predict`` catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.data.dataset import Dataset, open_dataset
from astrovader.errors import InputError
from astrovader.inference import Predictions, decode, infer
from astrovader.model import AstroVaDErNet

HELD_KARP_MAX = 12  # exact shortest route up to this many points (2^12 * 12^2 operations, milliseconds)

# --------------------------------------------------------------------------------------------------
# shortest route (travelling salesperson)
# --------------------------------------------------------------------------------------------------
def _distances(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))


def route_length(dist: np.ndarray, route: Sequence[int], closed: bool = True) -> float:
    """Length of ``route`` (node order) under the distance matrix; a closed route returns to its start."""
    r = list(route)
    legs = list(zip(r[:-1], r[1:], strict=True)) + ([(r[-1], r[0])] if closed and len(r) > 1 else [])
    return float(sum(dist[a, b] for a, b in legs))


def held_karp(dist: np.ndarray, closed: bool = True) -> list[int]:
    """Exact shortest route by Held-Karp dynamic programming, O(2^K K^2).

    ``dp[S, j]`` is the shortest path that visits exactly the set S and ends at j. A closed tour starts at
    node 0 (any start gives the same cycle); an open path may start anywhere, so every singleton is a start."""
    K = len(dist)
    if K <= 2:
        return list(range(K))
    full = (1 << K) - 1
    dp = np.full((1 << K, K), np.inf)
    parent = np.full((1 << K, K), -1, np.int64)
    starts = [0] if closed else range(K)
    for j in starts:
        dp[1 << j, j] = 0.0
    bits = 1 << np.arange(K)
    for mask in range(1, full + 1):
        members = (mask & bits) != 0
        if members.sum() < 2:
            continue
        prev = mask ^ bits  # for each end j: the set without j
        # cand[j, i] = dp[S - {j}, i] + d(i, j); only i in S - {j} are finite
        cand = dp[prev] + dist.T
        best = cand.argmin(1)
        val = cand[np.arange(K), best]
        dp[mask, members] = val[members]
        parent[mask, members] = best[members]
    ends = dp[full] + (dist[:, 0] if closed else 0.0)
    j = int(np.argmin(ends))
    route, mask = [], full
    while j >= 0:
        route.append(j)
        pj = int(parent[mask, j])
        mask ^= 1 << j
        j = pj
    return route[::-1]


def _two_opt(dist: np.ndarray, route: list[int], closed: bool) -> list[int]:
    """Reverse segments while that shortens the route (for K above the exact limit)."""
    r = list(route)
    n = len(r)
    improved = True
    while improved:
        improved = False
        for i in range(1 if closed else 0, n - 1):
            for j in range(i + 1, n):
                a = r[i - 1] if i > 0 else None
                b = r[j + 1] if j + 1 < n else (r[0] if closed else None)
                before = (dist[a, r[i]] if a is not None else 0) + (dist[r[j], b] if b is not None else 0)
                after = (dist[a, r[j]] if a is not None else 0) + (dist[r[i], b] if b is not None else 0)
                if after < before - 1e-12:
                    r[i:j + 1] = r[i:j + 1][::-1]
                    improved = True
    return r


def shortest_route(points: np.ndarray, closed: bool = True) -> list[int]:
    """Order of ``points`` (K, J) along the shortest route through all of them: exact (Held-Karp) for
    K <= 12, else nearest-neighbour from every start followed by 2-opt (within a few per cent in practice)."""
    dist = _distances(points)
    K = len(dist)
    if K <= HELD_KARP_MAX:
        return held_karp(dist, closed)
    best: list[int] | None = None
    for s in range(K) if K <= 200 else range(1):
        route, left = [s], set(range(K)) - {s}
        while left:
            nxt = min(left, key=lambda q: dist[route[-1], q])
            route.append(nxt)
            left.remove(nxt)
        route = _two_opt(dist, route, closed)
        if best is None or route_length(dist, route, closed) < route_length(dist, best, closed):
            best = route
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# interpolation (Figure 10) and traversal (Figure 11)
# --------------------------------------------------------------------------------------------------
def interpolate(net: AstroVaDErNet, z_a: np.ndarray, z_b: np.ndarray, steps: int = 8) -> np.ndarray:
    """Decode ``steps`` points on the straight line from ``z_a`` to ``z_b`` (both ends included)."""
    if steps < 2:
        raise InputError(f"steps must be >= 2, got {steps}")
    t = np.linspace(0, 1, steps)[:, None]
    z = (1 - t) * np.asarray(z_a, np.float64)[None] + t * np.asarray(z_b, np.float64)[None]
    return decode(net, z.astype(np.float32))


def latent_summary(net: AstroVaDErNet, dataset: str | Path | Dataset,
                   predictions: str | Path | pd.DataFrame | Predictions | None = None, batch_size: int = 1024,
                   progress: bool = False) -> Predictions:
    """:class:`Predictions` for every row of ``dataset``: ``predictions`` themselves when they already are, read
    from an ``astrovader predict`` catalogue when given (no second inference pass), else inferred."""
    ds = open_dataset(dataset)
    J, K = net.cfg.model.latent_dim, net.cfg.model.n_components
    if isinstance(predictions, Predictions):
        if not np.array_equal(predictions.rows, np.arange(len(ds))):
            raise InputError("the predictions do not cover every row of the dataset in order")
        return predictions
    if predictions is not None:
        cat = predictions if isinstance(predictions, pd.DataFrame) else pd.read_parquet(predictions)
        if len(cat) != len(ds) or not np.array_equal(cat["id"].to_numpy(), ds.ids):
            raise InputError("the predictions catalogue does not list the dataset's ids in order; "
                             "re-run `astrovader predict` on this dataset")
        return Predictions(np.arange(len(ds)), cat[[f"z_{j}" for j in range(J)]].to_numpy(np.float32),
                           cat[[f"logvar_{j}" for j in range(J)]].to_numpy(np.float32),
                           cat[[f"p_{k}" for k in range(K)]].to_numpy(np.float32),
                           cat["recon_mse"].to_numpy(np.float32))
    if len(ds) == 0:
        raise InputError(f"{ds.path}: the dataset is empty")
    return infer(net, ds, batch_size=batch_size, progress=progress, desc="encoding")


def route_interpolation(net: AstroVaDErNet, summary: Predictions, steps: int = 8,
                        closed: bool = True) -> dict[str, Any]:
    """Interpolate along the shortest route through the most probable object of each component.

    Returns ``anchors`` (dataset row per component, route order), ``components`` (route order), ``legs``:
    a list of (from component, to component, images (steps + 1, C, H, W) including both ends)."""
    K = summary.probs.shape[1]
    comps, anchors = [], []
    for k in range(K):
        i = int(np.argmax(summary.probs[:, k]))
        comps.append(k)
        anchors.append(i)
    z = summary.mu[anchors]
    order = shortest_route(z, closed=closed)
    pairs = list(zip(order[:-1], order[1:], strict=True)) + ([(order[-1], order[0])] if closed and K > 2 else [])
    legs = [(comps[a], comps[b], interpolate(net, z[a], z[b], steps + 1)) for a, b in pairs]
    return {"components": [comps[i] for i in order], "anchors": [anchors[i] for i in order], "legs": legs,
            "closed": closed and K > 2, "length": route_length(_distances(z), order, closed)}


def traverse(net: AstroVaDErNet, latents: np.ndarray, steps: int = 9) -> np.ndarray:
    """Vary each latent variable from its minimum to its maximum over ``latents`` (N, J), the others held
    at their mean: images (J, steps, C, H, W). For odd ``steps`` the two halves are spaced separately
    (min..mean, mean..max) so the centre column is the 'mean galaxy' exactly, as in the paper's Figure 11."""
    lat = np.asarray(latents, np.float64)
    if lat.ndim != 2 or len(lat) == 0:
        raise InputError(f"latents must be a non-empty (N, J) array, got shape {lat.shape}")
    if steps < 2:
        raise InputError(f"steps must be >= 2, got {steps}")
    mean, lo, hi = lat.mean(0), lat.min(0), lat.max(0)
    J = lat.shape[1]
    z = np.repeat(mean[None, None], J * steps, 0).reshape(J, steps, J)
    for j in range(J):
        if steps % 2:
            half = steps // 2
            vals = np.concatenate([np.linspace(lo[j], mean[j], half + 1), np.linspace(mean[j], hi[j], half + 1)[1:]])
        else:
            vals = np.linspace(lo[j], hi[j], steps)
        z[j, :, j] = vals
    imgs = decode(net, z.reshape(J * steps, J).astype(np.float32))
    return imgs.reshape(J, steps, *imgs.shape[1:])


# --------------------------------------------------------------------------------------------------
# deblending (Figure 12)
# --------------------------------------------------------------------------------------------------
def _twin_candidates(dataset: Dataset, rows: np.ndarray, target: np.ndarray, keep: np.ndarray, exclude: int,
                     n: int) -> np.ndarray:
    """The ``n`` rows among ``rows`` whose images are closest to ``target`` (uint8 (C, H, W)) in mean squared
    difference over the pixels where ``keep`` (H, W) is true, nearest first; read in chunks of 4096."""
    w = np.broadcast_to(keep, target.shape).astype(np.float32).ravel()
    t = target.astype(np.float32).ravel() / 255.0
    best_d, best_r = np.empty(0), np.empty(0, np.int64)
    rows = np.sort(rows[rows != exclude])
    for s in range(0, len(rows), 4096):
        idx = rows[s:s + 4096]
        imgs = dataset.take(idx).reshape(len(idx), -1).astype(np.float32) / 255.0
        d = (((imgs - t) ** 2) * w).sum(1)
        best_d, best_r = np.concatenate([best_d, d]), np.concatenate([best_r, idx])
        keep_n = np.argsort(best_d, kind="stable")[:n]
        best_d, best_r = best_d[keep_n], best_r[keep_n]
    return best_r


def deblend(net: AstroVaDErNet, summary: Predictions, dataset: Dataset, companion_components: Sequence[int],
            galaxies: Sequence[int] | None = None, steps: int = 8, n_examples: int = 1, *,
            companion_mask: Callable[[np.ndarray], np.ndarray] | None = None,
            companion_free: Callable[[np.ndarray], np.ndarray] | None = None,
            n_candidates: int = 60, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Deblending by interpolation (paper section 5.3, Figure 12).

    For a galaxy of a component grouped by companions (``companion_components``, e.g. flagged by
    ``astrovader describe``) find its companion-free twin: the galaxy whose image is closest to it outside
    the companion's pixels (``companion_mask``: uint8 image (C, H, W) -> (H, W) bool, true on the second
    sources; e.g. ``analysis.morphology.companion_mask``), among the ``n_candidates`` closest the first that
    ``companion_free`` (uint8 images (n, C, H, W) -> (n,) bool) accepts. The straight latent line from the
    galaxy to its twin is decoded: the companion fades while the central galaxy stays. (The twin is matched in
    pixels, not latent space: a galaxy's nearest neighbours in latent space carry a companion at the same
    place, so the line towards them keeps it; benchmarks/RESULTS.md has the measurement.) ``galaxies`` are
    positions in ``summary`` (default: the ``n_examples`` most probable members of the first companion
    component). Returns dicts with positions, ids, components and the images (input, strip of ``steps + 1``
    decoded images from the galaxy's own reconstruction to the twin's, twin input). ``rows`` (dataset rows,
    e.g. the test split an analysis reports on) restricts both the galaxies and their twins; a galaxy none of
    whose candidates ``companion_free`` accepts is left out rather than given a twin with a companion."""
    K = summary.probs.shape[1]
    comp = sorted({int(c) for c in companion_components})
    if not comp:
        raise InputError("no component is grouped by companions: nothing to deblend (name one with "
                         "--companion, or see astrovader describe)")
    if any(not 0 <= c < K for c in comp):
        raise InputError(f"companion components must be in 0..{K - 1}, got {comp}")
    if len(summary.rows) < 2:
        raise InputError("deblending needs at least two galaxies")
    assigned = summary.labels
    allowed = np.ones(len(summary.rows), bool) if rows is None else np.isin(summary.rows, rows)
    if galaxies is None:
        first = next((c for c in comp if ((assigned == c) & allowed).any()), None)
        if first is None:
            raise InputError(f"no galaxy has companion component(s) {comp} as its most probable: nothing to deblend")
        members = np.flatnonzero((assigned == first) & allowed)
        galaxies = members[np.argsort(-summary.probs[members, first], kind="stable")][:n_examples]
    position = {int(r): i for i, r in enumerate(summary.rows)}
    results = []
    for g in (int(i) for i in galaxies):
        row = int(summary.rows[g])
        target = dataset.take([row])[0]
        keep = ~companion_mask(target) if companion_mask is not None else np.ones(target.shape[-2:], bool)
        near = _twin_candidates(dataset, summary.rows[allowed], target, keep, row, n_candidates)
        if companion_free is not None:
            near = near[np.asarray(companion_free(dataset.take(near)), bool)]
        if len(near) == 0:  # no companion-free galaxy looks like it: no twin rather than a twin with a companion
            continue
        twin_row = int(near[0])
        twin = position[twin_row]
        strip = interpolate(net, summary.mu[g], summary.mu[twin], steps + 1)
        results.append({"galaxy": g, "galaxy_id": dataset.ids[row], "component": int(assigned[g]),
                        "partner": twin, "partner_id": dataset.ids[twin_row],
                        "partner_component": int(assigned[twin]),
                        "galaxy_image": target.astype(np.float32) / 255.0,
                        "partner_image": dataset.take([twin_row])[0].astype(np.float32) / 255.0, "strip": strip})
    return results
