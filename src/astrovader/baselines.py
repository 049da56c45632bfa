"""What any clustering of galaxy images must beat, and how every method is scored the same way.

* ``kmeans``: k-means on raw pixels;
* ``pca_gmm``: PCA(20) + GaussianMixture (the classical two-step pipeline);
* ``ae_gmm``: the same convolutional network trained as a plain autoencoder (reconstruction only, decoder fed the
  latent mean) for the same number of epochs, then a GaussianMixture on its latent means: the two-step deep
  pipeline that VaDE's joint training has to beat to justify itself;
* ``vae_gmm``: the same network as a plain VAE (reconstruction + unit-Gaussian KL, beta = 1) + GaussianMixture;
* ``brightness_gmm``: a GaussianMixture on two numbers per stamp, its total flux and central surface brightness
  (:func:`brightness_features`): what a clustering gets from brightness alone, with no morphology at all.

Scores: Hungarian accuracy, NMI, ARI and purity, the members of every component and whether anything was
non-finite, and optionally the 5-fold kNN accuracy of the representation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrovader.analysis.metrics import clustering_scores
from astrovader.compute import resolve_device, training_bf16, training_channels_last
from astrovader.config import Config
from astrovader.errors import InputError
from astrovader.feeding import augment
from astrovader.inference import infer
from astrovader.model import AstroVaDErNet, kl_unit, reconstruction_loss
from astrovader.schedule import learning_rate

BASELINES = ("kmeans", "pca_gmm", "brightness_gmm", "ae_gmm", "vae_gmm")
METRICS = ("accuracy", "nmi", "ari", "purity")
KNN_NEIGHBOURS = 5


@dataclass
class Task:
    """One set of labelled images and the AstroVaDEr config to cluster them with."""

    name: str  # e.g. "mnist", "gz1-k12", "simulated-cf0.2"
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int (N,)
    config: Config
    knn: bool = False  # also report 5-fold kNN accuracy of the representation
    reference: dict[str, float] = field(default_factory=dict)  # published numbers shown beside ours
    dataset: Path | None = None  # the training images as a packed dataset (training reads it)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # recorded with each seed (e.g. the crop)
    test: np.ndarray | None = None  # positions of held-out images: fit on the others, score on these

    @property
    def fit_index(self) -> np.ndarray:
        """Positions of the images every method is fitted on (all of them without a held-out part)."""
        return np.arange(len(self.images)) if self.test is None else np.setdiff1d(np.arange(len(self.images)),
                                                                                 self.test)

    @property
    def eval_index(self) -> np.ndarray:
        """Positions of the images every score is measured on: the held-out part, or all images."""
        return np.arange(len(self.images)) if self.test is None else np.sort(self.test)


def held_out_split(labels: np.ndarray, fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """Positions of a seeded, class-stratified held-out part holding ``fraction`` of the images (the same for
    every training seed, so seeds differ only in training)."""
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(test)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Mean 5-fold cross-validated kNN accuracy: how well the representation separates the classes at all,
    independently of whether the clustering found them."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(KNN_NEIGHBOURS), features, labels, cv=folds).mean())


def neighbour_agreement(features: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Share of each image's ``k`` nearest neighbours in ``features`` (Euclidean, itself excluded) that have its
    class: how often neighbours mined in the representation, as the scan epochs mine them, share a class."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(features) - 1)
    _, idx = NearestNeighbors(n_neighbors=k).fit(features).kneighbors()
    return float((labels[idx] == labels[:, None]).mean())


def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Mean 5-fold cross-validated accuracy of a logistic regression on the standardised representation: how much
    of the class information is linearly available in it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, features, labels, cv=folds).mean())


def score(labels: np.ndarray, pred: np.ndarray, n_components: int, finite: bool) -> dict[str, Any]:
    """The four metrics plus the health checks: members per component, empty components, non-finite values."""
    members = np.bincount(pred, minlength=n_components)[:n_components] if len(pred) else np.zeros(n_components, int)
    out: dict[str, Any] = clustering_scores(labels, pred)
    out.update(members=members.tolist(), empty_components=int((members == 0).sum()), nan=not finite)
    out["ok"] = bool(finite and out["empty_components"] == 0)
    return out


def pca_gmm_baseline(images: np.ndarray, n_components: int, seed: int = 0, pca_dims: int = 20,
                     apply_to: np.ndarray | None = None) -> np.ndarray:
    """The obvious non-deep baseline: PCA of the pixels, then a full-covariance Gaussian mixture, fitted on
    ``images`` (uint8) and returning the labels of ``apply_to`` (default: of ``images`` themselves)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    pca = PCA(n_components=min(pca_dims, flat(images).shape[1], len(images)), random_state=seed)
    gmm = GaussianMixture(n_components, random_state=seed, n_init=3).fit(pca.fit_transform(flat(images)))
    return gmm.predict(pca.transform(flat(images if apply_to is None else apply_to)))


def brightness_features(images: np.ndarray, border: int = 2, centre_radius: float = 2.5) -> np.ndarray:
    """(N, 2): log10 of each stamp's total flux above its border's median and of its mean surface brightness
    within ``centre_radius`` px of the centre, on the stored values / 255 (what every method sees), averaged over
    channels. Non-positive values are floored at 1e-4 (one grey level is 0.004)."""
    from astrovader.data.noise import border_pixels

    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    x = x.mean(1) if x.ndim == 4 else x
    sky = np.median(border_pixels(x, border), axis=1)
    x = x - sky[:, None, None]
    h, w = x.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    centre = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= centre_radius
    flux, central = x.sum((1, 2)), x[:, centre].mean(1)
    return np.log10(np.maximum(np.stack([flux, central], 1), 1e-4))


def brightness_gmm_baseline(images: np.ndarray, n_components: int, seed: int = 0,
                            apply_to: np.ndarray | None = None) -> np.ndarray:
    """The brightness-only floor: a GaussianMixture on :func:`brightness_features`, fitted on ``images`` and
    returning the labels of ``apply_to`` (default: of ``images`` themselves)."""
    bright = brightness_features(images)
    return posthoc_gmm(bright, n_components, seed, apply_to=None if apply_to is None else brightness_features(apply_to))


def posthoc_gmm(z: np.ndarray, n_components: int, seed: int, apply_to: np.ndarray | None = None) -> np.ndarray:
    """Full-covariance GaussianMixture (k-means start) fitted on a representation ``z``; returns the hard labels
    of ``apply_to`` (default: of ``z`` itself)."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components, covariance_type="full", random_state=seed, reg_covar=1e-4, max_iter=300)
    return gm.fit(z).predict(z if apply_to is None else apply_to)


def encode_all(net: AstroVaDErNet, images: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Latent means, log-variances and GMM posteriors of all images, by the one inference path (float32 on CPUs,
    so scores do not depend on the CPU model)."""
    return infer(net, images, batch_size=batch_size, reconstruct=False).as_dict()


def train_autoencoder(cfg: Config, images: np.ndarray, variational: bool) -> AstroVaDErNet:
    """The AstroVaDEr network trained without its mixture prior, with the same epochs, batch size, learning-
    rate schedule, augmentation and numerics as the s3VDC run: a plain autoencoder (loss = reconstruction, decoder
    fed mu) or a plain VAE (reconstruction + unit-Gaussian KL, beta = 1, decoder fed a sample)."""

    t = cfg.train
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    net = AstroVaDErNet(cfg).to(device)
    cl = training_channels_last(cfg, device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    bf16 = training_bf16(cfg, device)
    opt = torch.optim.Adam(net.network_parameters(), lr=t.lr)
    data = torch.from_numpy(images).to(device)
    g = torch.Generator(device=device).manual_seed(t.seed)
    n = len(data)
    stop = n - n % t.batch_size if n >= t.batch_size else n
    for epoch in range(t.epochs):
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, epoch)
        net.train()
        order = torch.randperm(n, device=device, generator=g)
        for s in range(0, stop, t.batch_size):
            x = data[order[s:s + t.batch_size]].float().div_(255.0)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            x = augment(x, g, t)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(x, sample=variational)
            loss = reconstruction_loss(out["recon"].float(), x, cfg.loss.reconstruction)
            if variational:
                loss = loss + kl_unit(out["mu"].float(), out["logvar"].float())
            loss = loss.mean()
            if cfg.loss.l2 > 0:
                loss = loss + cfg.loss.l2 * net.l2_penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss in epoch {epoch}")
    return net


def _network_settings(cfg: Config) -> str:
    """Everything that shapes a baseline network's training (the seed included): the config without the
    mixture prior's shape (K, covariance) and without the loss weights only the mixture model uses."""
    d = cfg.to_dict()
    for key in ("n_components", "covariance"):  # the prior's; train_autoencoder never builds a loss on it
        d["model"].pop(key)
    for key in ("gamma", "gmm_kl_scale", "minmax_scale"):  # the s3VDC losses' weights, unused by train_autoencoder
        d["loss"].pop(key)
    return json.dumps(d, sort_keys=True)


def run_baseline(method: str, task: Task, cfg: Config,
                 features: dict[tuple[str, str, str | int], np.ndarray] | None = None) -> dict[str, Any]:
    """Score one baseline. ``features`` caches the trained AE/VAE latents per (method, network settings, dataset),
    so tasks on the same images whose configs differ only in the prior (K, covariance) or mixture-only loss
    weights share one trained network per seed, as they would in practice (that training never sees the prior).
    Another latent size trains its own."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    seed, k = cfg.train.seed, cfg.model.n_components
    fit, ev = task.fit_index, task.eval_index
    labels = task.labels[ev]
    t0 = time.perf_counter()
    try:
        if method in ("kmeans", "pca_gmm"):
            flat = task.images.reshape(len(task.images), -1).astype(np.float32) / 255.0
        if method == "kmeans":
            feats = flat[ev]
            pred = KMeans(k, n_init=10, random_state=seed).fit(flat[fit]).predict(feats)
        elif method == "pca_gmm":
            pca = PCA(20, random_state=seed).fit(flat[fit])
            feats = pca.transform(flat[ev])
            pred = posthoc_gmm(pca.transform(flat[fit]), k, seed, apply_to=feats)
        elif method == "brightness_gmm":
            feats = brightness_features(task.images[ev])
            pred = brightness_gmm_baseline(task.images[fit], k, seed, apply_to=task.images[ev])
        elif method in ("ae_gmm", "vae_gmm"):
            key = (method, _network_settings(cfg), str(task.dataset) if task.dataset is not None else id(task.images))
            if features is not None and key in features:
                all_feats = features[key]
            else:
                net = train_autoencoder(cfg, task.images[fit], variational=method == "vae_gmm")
                all_feats = encode_all(net, task.images)["mu"]
                if features is not None:
                    features[key] = all_feats
            feats = all_feats[ev]
            pred = posthoc_gmm(all_feats[fit].astype(np.float64), k, seed, apply_to=feats.astype(np.float64))
        else:
            raise InputError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
        result = score(labels, pred, k, bool(np.isfinite(feats).all()))
        if task.knn:
            result["knn_accuracy"] = knn_accuracy(feats, labels, seed)
            result["linear_probe"] = linear_probe_accuracy(feats, labels, seed)
    except (FloatingPointError, ValueError) as exc:
        if "unknown baseline" in str(exc):
            raise
        result = {**{m: float("nan") for m in METRICS}, "nan": True, "ok": False, "empty_components": None,
                  "error": str(exc)}
    result["seconds"] = time.perf_counter() - t0
    return result
