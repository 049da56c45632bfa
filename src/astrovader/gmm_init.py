"""The mixture prior's starting point and its upkeep: latent moments, the s3VDC mini-batch initialisation
(k-means + GaussianMixture, or clusters on a UMAP graph), the alignment phase's labels, and re-seeding of
components that lose all their members.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from astrovader.compute import DistInfo, broadcast_parameters, epoch_seed, training_channels_last
from astrovader.config import Config, TrainConfig
from astrovader.errors import InputError
from astrovader.feeding import BatchFeeder, to_float
from astrovader.model import AstroVaDErNet
from astrovader.runs import INIT_CLUSTERS, atomic_save_safetensors


@torch.no_grad()
def latent_moments(net: AstroVaDErNet, batches: Iterator[torch.Tensor] | list[torch.Tensor],
                   channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Latent means and log-variances (float64) of uint8 image batches."""
    net.eval()
    mus, lvs = [], []
    for xb in batches:
        mu, lv = net.encode(to_float(xb, channels_last))
        mus.append(mu.float().cpu())
        lvs.append(lv.float().cpu())
    return torch.cat(mus).numpy().astype(np.float64), torch.cat(lvs).numpy().astype(np.float64)


def init_batches(feeder: BatchFeeder, t: TrainConfig, device: torch.device, key: int) -> Iterator[torch.Tensor]:
    """``gmm_init_batches`` random training batches, the same ones for the same (seed, key): the GMM
    initialisation draws them with key -1, so a resumed run can draw its alignment images again."""
    g = torch.Generator(device=device).manual_seed(epoch_seed(t.seed, key))
    for i, xb in enumerate(feeder.batches(t.batch_size, g, drop_last=False)):
        if i >= t.gmm_init_batches:
            break
        yield xb


def fit_gmm_init(z: np.ndarray, n_components: int, seed: int, n_init: int = 1, covariance: str = "diag",
                 embedding: str = "none", neighbours: int = 20) -> dict[str, np.ndarray]:
    """The prior's starting mixture on latent means ``z``.

    ``embedding="none"``: k-means, then a GaussianMixture started at its centres (s3VDC's mini-batch init).
    ``embedding="umap"``: the clusters are found on a UMAP embedding of ``z`` (a GaussianMixture there), and the
    prior's weights, means and variances are those clusters' responsibility-weighted moments in the latent
    space itself. A mixture of Gaussians fitted directly to an autoencoder's latent means cuts curved,
    elongated groups apart; UMAP's neighbour graph keeps them together (McConville et al. 2020, "N2D"). On the
    10,000 MNIST test digits after gamma-training this raises the initial accuracy from ~0.72 to ~0.90
    (benchmarks/RESULTS.md), and VaDE's final accuracy follows its initialisation."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if len(z) < n_components:
        raise InputError(f"GMM initialisation needs at least {n_components} latent vectors, got {len(z)}; "
                         "use more train.gmm_init_batches or a smaller model.n_components")
    if embedding == "none":
        km = KMeans(n_components, n_init=n_init, random_state=seed).fit(z)
        gm = GaussianMixture(n_components, covariance_type=covariance, means_init=km.cluster_centers_,
                             random_state=seed, reg_covar=1e-6, max_iter=200).fit(z)
        return {"weights": gm.weights_, "means": gm.means_, "variances": gm.covariances_,
                "responsibilities": gm.predict_proba(z)}
    if embedding != "umap":
        raise InputError(f"unknown GMM initialisation embedding {embedding!r}; use 'none' or 'umap'")
    e = umap_embedding(z, min(10, z.shape[1]), neighbours, seed)
    resp = GaussianMixture(n_components, covariance_type="full", n_init=n_init, random_state=seed, reg_covar=1e-6,
                           max_iter=200).fit(e).predict_proba(e)
    nk = resp.sum(0) + 1e-12
    means = (resp.T @ z) / nk[:, None]
    diff = z[None, :, :] - means[:, None, :]  # (K, N, J)
    if covariance == "full":
        cov = np.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None]
        variances = cov + 1e-6 * np.eye(z.shape[1])
    else:
        variances = np.einsum("kn,kni->ki", resp.T, diff**2) / nk[:, None] + 1e-6
    return {"weights": nk / nk.sum(), "means": means, "variances": variances, "responsibilities": resp}


def umap_embedding(z: np.ndarray, n_components: int, neighbours: int, seed: int) -> np.ndarray:
    """A UMAP embedding tuned for clustering (min_dist = 0 packs each group tightly), seeded for repeatability."""
    import warnings

    import umap

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state": the price of repeatability
            return umap.UMAP(n_components=n_components, n_neighbors=min(neighbours, len(z) - 1), min_dist=0.0,
                             random_state=seed).fit_transform(z)
    finally:
        # numba's OpenMP layer resets the process's OpenMP thread count, which is torch's too: without this, a run
        # asked to use 1 thread trains on all cores after the initialisation, in another floating-point order
        torch.set_num_threads(threads)


@torch.no_grad()
def initialise_gmm(net: AstroVaDErNet, feeder: BatchFeeder, cfg: Config, device: torch.device) -> np.ndarray:
    """Set the prior from a mixture fitted to the latent means of the ``init_batches``; return each of those
    images' initial cluster (the alignment phase's labels)."""
    t = cfg.train
    mu, logvar = latent_moments(net, init_batches(feeder, t, device, -1), training_channels_last(cfg, device))
    fit = fit_gmm_init(mu, cfg.model.n_components, t.seed, t.gmm_init_restarts, cfg.model.covariance,
                       t.gmm_init_embedding, t.gmm_init_neighbours)
    variances = fit["variances"]
    resp = fit["responsibilities"]
    if t.gmm_init_add_encoder_variance:
        # The prior models z ~ N(mu, exp(logvar)), not mu alone. A mixture fitted to the means of a
        # barely-regularised encoder can have variances orders of magnitude below exp(logvar) in some
        # dimensions, and the GMM KL term exp(logvar)/var_c then explodes at the start of annealing.
        extra = (resp.T @ np.exp(logvar)) / resp.sum(0).clip(1e-12)[:, None]
        variances = variances + (extra if variances.ndim == 2 else np.stack([np.diag(e) for e in extra]))
    dtype = net.gmm.means.dtype
    weights = (torch.as_tensor(fit["weights"], dtype=dtype) if t.gmm_init == "fitted"
               else net.gmm.weights.detach().cpu())
    net.gmm.set_parameters(weights.to(device), torch.as_tensor(fit["means"], dtype=dtype, device=device),
                           torch.as_tensor(variances, dtype=dtype, device=device))
    return resp.argmax(1)


def alignment_set(feeder: BatchFeeder, cfg: Config, device: torch.device, run_dir: Path, dist_info: DistInfo,
                   labels: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The GMM initialisation's images (drawn again: the draw is seeded) and their initial clusters (in memory
    right after the initialisation, else read from the run directory: a resumed run), on every rank."""
    images = torch.cat(list(init_batches(feeder, cfg.train, device, -1)))
    out = torch.zeros(len(images), dtype=torch.int64, device=device)
    if dist_info.is_main:
        if labels is None:
            path = run_dir / INIT_CLUSTERS
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; the alignment phase needs the initial clusters written "
                                        "at the GMM initialisation. Start the run again from scratch.")
            labels = load_file(str(path))["labels"].numpy()
        if len(labels) != len(images):
            raise InputError(f"{run_dir / INIT_CLUSTERS}: {len(labels)} labels for {len(images)} initialisation "
                             "images; the dataset or train.batch_size/gmm_init_batches changed since the init")
        out.copy_(torch.as_tensor(labels, dtype=torch.int64))
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.broadcast(out, src=0)
    return images, out


@torch.no_grad()
def neighbour_set(net: AstroVaDErNet, images: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (uint8, the GMM initialisation's: drawn once per run with :func:`init_batches`' key -1) and the
    positions (N, scan_neighbours) of each one's nearest neighbours among them by the latent means of the network
    as it is now. Mined afresh at the start of every scan epoch, so neighbours follow the latent space and a
    resumed run mines the same ones."""
    from sklearn.neighbors import NearestNeighbors

    net.eval()
    mu = torch.cat([net.encode(images[s:s + 1024].float().div_(255.0))[0] for s in range(0, len(images), 1024)])
    net.train()
    k = min(cfg.train.scan_neighbours, len(images) - 1)
    _, idx = NearestNeighbors(n_neighbors=k).fit(mu.cpu().numpy()).kneighbors()  # each point is not its own
    return images, torch.as_tensor(idx, device=images.device)


@torch.no_grad()
def reseed_empty_components(net: AstroVaDErNet, feeder: BatchFeeder, cfg: Config, device: torch.device,
                            epoch: int) -> list[tuple[int, int]]:
    """Give every (nearly) empty component something to model: split the most populous one in two.

    A component whose share of hard assignments on ``gmm_init_batches`` training batches is below
    ``train.reseed_min_fraction`` of an equal share (1/K) takes one half of a 2-means split of the most
    populous component's latent means; the other half stays. Means and variances are the halves' moments
    (plus the encoder variance when ``gmm_init_add_encoder_variance``, as at initialisation), and the two
    share the weights they had, so the weights still sum to 1. Returns the (re-seeded, split) pairs.
    Without this a broad, low-weight component can sit under the others and never be anyone's most probable
    cluster (seen on GZ1 with K = 12)."""
    from sklearn.cluster import KMeans

    t, K = cfg.train, cfg.model.n_components
    if t.reseed_min_fraction <= 0:
        return []
    mu, logvar = latent_moments(net, init_batches(feeder, t, device, -2 - epoch), training_channels_last(cfg, device))
    gmm = net.gmm
    labels = gmm.posterior(torch.as_tensor(mu, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()
    counts = np.bincount(labels, minlength=K)
    dead = [int(k) for k in np.argsort(counts, kind="stable") if counts[k] < t.reseed_min_fraction * len(mu) / K]
    if not dead:
        return []
    weights = gmm.weights.double().cpu().numpy()
    means = gmm.means.double().cpu().numpy()
    full = gmm.covariance == "full"
    L = gmm.scale_tril.double()
    cov = (L @ L.transpose(-1, -2)).cpu().numpy() if full else gmm.variances.double().cpu().numpy()
    enc_var = np.exp(logvar)
    pairs = []
    for d in dead:
        c = int(np.argmax(counts))
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2 or c == d:
            break
        halves = KMeans(2, n_init=3, random_state=t.seed).fit_predict(mu[idx])
        for k, part in ((c, 0), (d, 1)):
            rows = idx[halves == part]
            means[k] = mu[rows].mean(0)
            var = mu[rows].var(0) + 1e-6
            if t.gmm_init_add_encoder_variance:  # as at initialisation: the prior models z, not only mu
                var = var + enc_var[rows].mean(0)
            cov[k] = np.diag(var) if full else var
        weights[c] = weights[d] = (weights[c] + weights[d]) / 2
        labels[idx[halves == 1]] = d
        counts = np.bincount(labels, minlength=K)
        pairs.append((d, c))
    dtype = gmm.means.dtype
    gmm.set_parameters(*(torch.as_tensor(a, dtype=dtype, device=device) for a in (weights, means, cov)))
    return pairs


def initialise_mixture(net: AstroVaDErNet, feeder: BatchFeeder, cfg: Config, device: torch.device,
                        dist_info: DistInfo, run_dir: Path) -> np.ndarray | None:
    """The mixture prior fitted after gamma-training (rank 0, then broadcast); its initial clusters, which the
    alignment epochs use, are also saved for a resume."""
    init_labels = None
    if dist_info.is_main:
        init_labels = initialise_gmm(net, feeder, cfg, device)
        if cfg.train.align_epochs:
            atomic_save_safetensors({"labels": torch.from_numpy(init_labels)}, run_dir / INIT_CLUSTERS,
                                     {"format": "astrovader-init-clusters"})
    broadcast_parameters(net, dist_info)
    return init_labels


def reseed_mixture(net: AstroVaDErNet, feeder: BatchFeeder, cfg: Config, device: torch.device, dist_info: DistInfo,
            epoch: int, row: dict[str, Any]) -> None:
    """At the end of a period, (almost) empty components re-seeded by splitting the most populous (rank 0)."""
    if dist_info.is_main:
        pairs = reseed_empty_components(net, feeder, cfg, device, epoch)
        row["reseeded"] = " ".join(f"{d}<{c}" for d, c in pairs)
        if pairs:
            tqdm.write(f"epoch {epoch}: re-seeded (almost) empty mixture components by splitting "
                       f"the most populous (empty<split): {row['reseeded']}")
    broadcast_parameters(net, dist_info)
