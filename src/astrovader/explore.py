"""Latent-space exploration (paper section 5.3, Figures 10-12), without any plotting: the shortest route through
the components' most probable members and the interpolation along it, the traversal of each latent variable, and
deblending by interpolation. Figures of these live in :mod:`astrovader.analysis.explore_figures`.

Everything here works from a trained network and the :class:`~astrovader.inference.Predictions` of a real
dataset (latent means, probabilities, reconstruction errors), computed once by the inference path or read from
an ``astrovader predict`` catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.data.dataset import Dataset, open_dataset
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
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = np.linspace(0, 1, steps)[:, None]
    z = (1 - t) * np.asarray(z_a, np.float64)[None] + t * np.asarray(z_b, np.float64)[None]
    return decode(net, z.astype(np.float32))


def latent_summary(net: AstroVaDErNet, dataset: str | Path | Dataset,
                   predictions: str | Path | pd.DataFrame | None = None, batch_size: int = 1024,
                   progress: bool = False) -> Predictions:
    """:class:`Predictions` for every row of ``dataset``: read from an ``astrovader predict`` catalogue when given
    (no second inference pass), else inferred."""
    ds = open_dataset(dataset)
    J, K = net.cfg.model.latent_dim, net.cfg.model.n_clusters
    if predictions is not None:
        cat = predictions if isinstance(predictions, pd.DataFrame) else pd.read_parquet(predictions)
        if len(cat) != len(ds) or not np.array_equal(cat["id"].to_numpy(), ds.ids):
            raise ValueError("the predictions catalogue does not list the dataset's ids in order; "
                             "re-run `astrovader predict` on this dataset")
        return Predictions(np.arange(len(ds)), cat[[f"z_{j}" for j in range(J)]].to_numpy(np.float32),
                           cat[[f"logvar_{j}" for j in range(J)]].to_numpy(np.float32),
                           cat[[f"p_{k}" for k in range(K)]].to_numpy(np.float32),
                           cat["recon_mse"].to_numpy(np.float32))
    if len(ds) == 0:
        raise ValueError(f"{ds.path}: the dataset is empty")
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
        raise ValueError(f"latents must be a non-empty (N, J) array, got shape {lat.shape}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
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
def _nearest_by_pixels(ds: Dataset, target: np.ndarray, rows: np.ndarray, exclude: int) -> tuple[int, float]:
    """Row among ``rows`` whose image has the lowest pixel MSE to ``target`` (uint8), read in chunks."""
    best, best_mse = -1, np.inf
    rows = np.sort(rows[rows != exclude])
    t = target.astype(np.float32) / 255.0
    for s in range(0, len(rows), 4096):
        idx = rows[s:s + 4096]
        imgs = ds.take(idx).astype(np.float32) / 255.0
        mse = ((imgs - t[None]) ** 2).reshape(len(idx), -1).mean(1)
        i = int(np.argmin(mse))
        if mse[i] < best_mse:
            best, best_mse = int(idx[i]), float(mse[i])
    return best, best_mse


def deblend(net: AstroVaDErNet, summary: Predictions, dataset: Dataset, companion_component: int | None = None,
            galaxy: int | None = None, steps: int = 8, n_examples: int = 1) -> list[dict[str, Any]]:
    """Crude deblending by interpolation (paper section 5.3, Figure 12).

    The companion component defaults to the one whose members reconstruct worst on average (secondary
    sources are what the decoder reproduces least well). For each of the ``n_examples`` most probable
    members (or the given ``galaxy`` row): its most probable *other* component is taken as its morphological
    class, the member of that class with the lowest pixel MSE to it is its clean counterpart, and the latent
    line between the two is decoded. Returns dicts with rows, components, MSE and images (input, strip,
    counterpart input)."""
    K = summary.probs.shape[1]
    if K < 2:
        raise ValueError("deblending needs at least two components")
    assigned = summary.labels
    if companion_component is None:
        means = np.array([summary.recon_mse[assigned == k].mean() if (assigned == k).any() else -np.inf
                          for k in range(K)])
        companion_component = int(np.argmax(means))
    if not 0 <= companion_component < K:
        raise ValueError(f"companion component must be in 0..{K - 1}, got {companion_component}")
    c = companion_component
    if galaxy is not None:
        targets = [int(galaxy)]
    else:
        members = np.flatnonzero(assigned == c)
        pool = members if len(members) else np.arange(len(assigned))
        targets = [int(i) for i in pool[np.argsort(-summary.probs[pool, c])][:n_examples]]
    results = []
    for g in targets:
        others = [int(k) for k in np.argsort(-summary.probs[g]) if k != c and (assigned == k).any()]
        # A degenerate model may assign everything to one component: then search all other galaxies.
        rows = np.flatnonzero(assigned == others[0]) if others else np.arange(len(assigned))
        target_img = dataset.take([g])[0]
        partner, mse = _nearest_by_pixels(dataset, target_img, rows, exclude=g)
        partner_comp = others[0] if others else int(assigned[partner])
        strip = interpolate(net, summary.mu[g], summary.mu[partner], steps + 1)
        results.append({"galaxy": g, "galaxy_id": dataset.ids[g], "component": c,
                        "partner": partner, "partner_id": dataset.ids[partner],
                        "partner_component": partner_comp, "pixel_mse": mse,
                        "galaxy_image": target_img.astype(np.float32) / 255.0,
                        "partner_image": dataset.take([partner])[0].astype(np.float32) / 255.0,
                        "strip": strip})
    return results
