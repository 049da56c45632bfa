"""The one 2-D map of a latent space that the explorer page and the report draw: UMAP of the latent means.

UMAP's own nearest-neighbour search (pynndescent) compiles with numba on first use in every process, which cost
about 25 s of a 30 s map of the demo's 8,000 galaxies. The latent space has a handful of dimensions, where an
exact search (scikit-learn) takes under a second, so the neighbours are found exactly and handed to UMAP
(``precomputed_knn``); the map is UMAP's, from neighbours at least as good (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import warnings

import numpy as np

N_NEIGHBOURS = 15
MIN_DIST = 0.1


def latent_map(mu: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) float32 map of latent means ``mu`` (N, J): UMAP (``N_NEIGHBOURS`` neighbours, ``MIN_DIST``), seeded;
    PCA for fewer than 20 galaxies, where a neighbour graph means little."""
    mu = np.asarray(mu, np.float32)
    if len(mu) < 20:
        from sklearn.decomposition import PCA

        out = PCA(2).fit_transform(mu) if len(mu) > 2 else np.zeros((len(mu), 2))
        return out.astype(np.float32)
    import umap
    from sklearn.neighbors import NearestNeighbors

    k = min(N_NEIGHBOURS, len(mu) - 1)
    dist, idx = NearestNeighbors(n_neighbors=k).fit(mu).kneighbors(mu)  # each point first, at distance 0
    with warnings.catch_warnings():
        # seeded maps are single-threaded ("n_jobs overridden"); a map never transforms new data ("knn_search_index")
        warnings.filterwarnings("ignore", message=".*(n_jobs|knn_search_index).*", category=UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=MIN_DIST, random_state=seed, n_jobs=1,
                            precomputed_knn=(idx, dist.astype(np.float32), None))
        return reducer.fit_transform(mu).astype(np.float32)
