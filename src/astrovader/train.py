"""s3VDC training: the schedule as data, the epoch loop, mini-batch GMM initialisation and checkpoints.

Phases (Cao et al. 2020, as used by AstroVaDEr):

1. gamma-training for ``gamma_epochs``: loss = recon + gamma * KL(q(z|x) || N(0, I)); GMM frozen.
2. mini-batch GMM initialisation after the last gamma epoch: latent means of ``gmm_init_batches``
   random training batches -> k-means -> diagonal GaussianMixture started at the k-means centres
   (or, with ``gmm_init_embedding = "umap"``, clusters found on a UMAP graph of those latent means).
   Optionally ``align_epochs`` of alignment: the GMM KL as in the static phase, but with q(c|x) fixed to each
   initialisation image's initial cluster, plus a cross-entropy making that cluster the most probable one.
3. ``periods`` x (annealing for ``anneal_epochs`` with beta = (t / anneal_epochs)^power rising 0 -> 1,
   then static for ``static_epochs`` with beta = 1): loss = recon + (beta + gamma) * scale * GMM KL.

The whole state needed to continue (network, GMM, optimizer, epoch, history) is one safetensors file
written atomically after every epoch, so a run killed at any moment resumes from its last full epoch.
Every source of randomness is re-seeded from (seed, epoch), which makes a resumed CPU run reproduce an
uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from astrovader.config import Config, TrainConfig
from astrovader.data.dataset import Dataset, atomic_write_bytes, open_dataset
from astrovader.model import AstroVaDErNet, vade_losses

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
CONFIG = "config.toml"
HISTORY = "history.csv"
INIT_CLUSTERS = "init_clusters.safetensors"  # the initial clustering's labels, for a resumed alignment phase
HISTORY_FIELDS = ("epoch", "phase", "beta", "kl_weight", "lr", "train_total", "train_recon", "train_kl_unit",
                  "train_kl_gmm", "val_total", "val_recon", "val_kl_unit", "val_kl_gmm", "seconds",
                  "reseeded")  # "d<c ...": component d re-seeded by splitting c at the end of that epoch


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops and the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------------
# the schedule, as data
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    phase: str  # "gamma", "anneal" or "static"
    beta: float  # annealing factor, already raised to the power (0 in gamma-training)
    kl_unit_weight: float
    kl_gmm_weight: float
    lr: float


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step-wise exponential decay from ``lr`` that reaches ``lr_min`` exactly at the last epoch."""
    last = cfg.epochs - 1
    if last <= 0:
        return cfg.lr_min
    every = min(cfg.lr_decay_every, last)
    steps = last // every
    frac = min(epoch // every, steps) / steps
    return cfg.lr * (cfg.lr_min / cfg.lr) ** frac


def schedule(cfg: Config) -> list[EpochPlan]:
    t, lo = cfg.train, cfg.loss
    plans = [EpochPlan(e, "gamma", 0.0, lo.gamma, 0.0, learning_rate(t, e)) for e in range(t.gamma_epochs)]
    e = t.gamma_epochs
    for _ in range(t.align_epochs):
        plans.append(EpochPlan(e, "align", 1.0, 0.0, (1.0 + lo.gamma) * lo.gmm_kl_scale, learning_rate(t, e)))
        e += 1
    for _ in range(t.periods):
        for i in range(t.anneal_epochs):
            beta = (i / t.anneal_epochs) ** t.anneal_power
            plans.append(EpochPlan(e, "anneal", beta, 0.0, (beta + lo.gamma) * lo.gmm_kl_scale,
                                   learning_rate(t, e)))
            e += 1
        for _ in range(t.static_epochs):
            plans.append(EpochPlan(e, "static", 1.0, 0.0, (1.0 + lo.gamma) * lo.gmm_kl_scale, learning_rate(t, e)))
            e += 1
    return plans


# --------------------------------------------------------------------------------------------------
# devices and feeding
# --------------------------------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device = {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return dev


def to_float(x_uint8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def random_flips(x: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Independent random horizontal and vertical flips per image, done on x's device in two ops.

    ``x`` is this rank's slice of a global batch (``shard=(rank, world)``): the flip decisions are drawn for
    the whole global batch and sliced, so they do not depend on how many ranks share it."""
    n_global = x.shape[0] * shard[1]
    h = _shard(torch.rand(n_global, device=x.device, generator=generator) < 0.5, shard)
    v = _shard(torch.rand(n_global, device=x.device, generator=generator) < 0.5, shard)
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


def random_affine(x: torch.Tensor, generator: torch.Generator, max_rotate_deg: float, max_shift_px: float,
                  shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Rotate each image by a uniform angle in +-max_rotate_deg and shift it by up to +-max_shift_px pixels
    per axis, all images at once on x's device (one affine_grid + grid_sample). Pixels brought in from
    outside the stamp repeat its border (sky for galaxies, background for digits), so no artificial black
    edges appear. The draws are made for the global batch and sliced per rank, like ``random_flips``."""
    n_global = x.shape[0] * shard[1]
    u = _shard(torch.rand(n_global, 3, device=x.device, generator=generator), shard) * 2 - 1
    angle = u[:, 0] * math.radians(max_rotate_deg)
    shift = u[:, 1:] * (2 * max_shift_px / x.shape[-1])  # grid coordinates span 2 over the image width
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator, t: TrainConfig,
            shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The training-time augmentation the config asks for: random flips, then a random rotation and shift."""
    if t.flips:
        x = random_flips(x, generator, shard)
    if t.augment_rotate > 0 or t.augment_shift > 0:
        x = random_affine(x, generator, t.augment_rotate, t.augment_shift, shard)
    return x


class BatchFeeder:
    """Serves uint8 image batches on the training device without per-image Python work.

    Small datasets (under ``max_resident_gb``) are copied to the device once and indexed there. Larger
    ones are streamed: blocks of consecutive rows, in a random order, are read by a background thread,
    pinned, moved to the device in one transfer and shuffled there.
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray, device: torch.device, max_resident_gb: float,
                 block_rows: int = 16384):
        self.dataset, self.device = dataset, device
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.n = len(self.indices)
        per_image = dataset.channels * dataset.image_size**2
        self.resident = self.n * per_image <= max_resident_gb * 1e9
        self.block_rows = block_rows
        self.data: torch.Tensor | None = None
        if self.resident:
            self.data = torch.from_numpy(self._read(self.indices)).to(device)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx):  # contiguous: one slice
            return self.dataset.read(int(idx[0]), int(idx[-1]) + 1)
        return self.dataset.take(idx)

    def batches(self, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                drop_last: bool = True, shard: tuple[int, int] = (0, 1)) -> Iterator[torch.Tensor]:
        """Global batches in a random order drawn from ``generator``. With ``shard=(rank, world)`` each
        rank receives its contiguous slice of every global batch; all ranks must pass generators in the
        same state, so that together they see exactly the batches a single process would."""
        if self.resident:
            assert self.data is not None
            for pos in _positions(self.n, batch_size, generator, shard, shuffle, drop_last):
                yield self.data[pos]
            return
        for batch in self._streamed(batch_size, generator, shuffle, drop_last):
            yield batch[_shard(torch.arange(len(batch), device=batch.device), shard)]

    def _streamed(self, batch_size: int, generator: torch.Generator, shuffle: bool,
                  drop_last: bool) -> Iterator[torch.Tensor]:
        blocks = [self.indices[s:s + self.block_rows] for s in range(0, self.n, self.block_rows)]
        order = (torch.randperm(len(blocks), generator=torch.Generator().manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())))
            .tolist() if shuffle else list(range(len(blocks))))
        q: queue.Queue = queue.Queue(maxsize=2)

        def reader() -> None:
            for b in order:
                arr = torch.from_numpy(self._read(blocks[b]))
                q.put(arr.pin_memory() if self.device.type == "cuda" else arr)
            q.put(None)

        threading.Thread(target=reader, daemon=True).start()
        carry: torch.Tensor | None = None
        while (block := q.get()) is not None:
            block = block.to(self.device, non_blocking=True)
            if shuffle:
                block = block[torch.randperm(len(block), device=self.device, generator=generator)]
            if carry is not None:
                block = torch.cat([carry, block])
            full = len(block) - len(block) % batch_size
            for s in range(0, full, batch_size):
                yield block[s:s + batch_size]
            carry = block[full:] if full < len(block) else None
        if carry is not None and len(carry) and not (drop_last and self.n >= batch_size):
            yield carry


def _positions(n: int, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1),
               shuffle: bool = True, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Global batches of positions in range(n) (shuffled by ``generator``), this rank's slice of each."""
    order = (torch.randperm(n, device=generator.device, generator=generator) if shuffle
             else torch.arange(n, device=generator.device))
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield _shard(order[s:s + batch_size], shard)


def _shard(positions: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    rank, world = shard
    if world == 1:
        return positions
    per = -(-len(positions) // world)
    return positions[rank * per:(rank + 1) * per]


# --------------------------------------------------------------------------------------------------
# mini-batch GMM initialisation
# --------------------------------------------------------------------------------------------------
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
    g = torch.Generator(device=device).manual_seed(_epoch_seed(t.seed, key))
    for i, xb in enumerate(feeder.batches(t.batch_size, g, drop_last=False)):
        if i >= t.gmm_init_batches:
            break
        yield xb


def fit_gmm_init(z: np.ndarray, n_clusters: int, seed: int, n_init: int = 1, covariance: str = "diag",
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

    if len(z) < n_clusters:
        raise ValueError(f"GMM initialisation needs at least {n_clusters} latent vectors, got {len(z)}; "
                         "use more train.gmm_init_batches or a smaller model.n_clusters")
    if embedding == "none":
        km = KMeans(n_clusters, n_init=n_init, random_state=seed).fit(z)
        gm = GaussianMixture(n_clusters, covariance_type=covariance, means_init=km.cluster_centers_,
                             random_state=seed, reg_covar=1e-6, max_iter=200).fit(z)
        return {"weights": gm.weights_, "means": gm.means_, "variances": gm.covariances_,
                "responsibilities": gm.predict_proba(z)}
    if embedding != "umap":
        raise ValueError(f"unknown GMM initialisation embedding {embedding!r}; use 'none' or 'umap'")
    e = umap_embedding(z, min(10, z.shape[1]), neighbours, seed)
    resp = GaussianMixture(n_clusters, covariance_type="full", n_init=n_init, random_state=seed, reg_covar=1e-6,
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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state": the price of repeatability
        return umap.UMAP(n_components=n_components, n_neighbors=min(neighbours, len(z) - 1), min_dist=0.0,
                         random_state=seed).fit_transform(z)


@torch.no_grad()
def initialise_gmm(net: AstroVaDErNet, feeder: BatchFeeder, cfg: Config, device: torch.device) -> np.ndarray:
    """Set the prior from a mixture fitted to the latent means of the ``init_batches``; return each of those
    images' initial cluster (the alignment phase's labels)."""
    t = cfg.train
    mu, logvar = latent_moments(net, init_batches(feeder, t, device, -1), _channels_last(cfg, device))
    fit = fit_gmm_init(mu, cfg.model.n_clusters, t.seed, t.gmm_init_restarts, cfg.model.covariance,
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


def _alignment_set(feeder: BatchFeeder, cfg: Config, device: torch.device, run_dir: Path, dist_info: DistInfo,
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
            raise ValueError(f"{run_dir / INIT_CLUSTERS}: {len(labels)} labels for {len(images)} initialisation "
                             "images; the dataset or train.batch_size/gmm_init_batches changed since the init")
        out.copy_(torch.as_tensor(labels, dtype=torch.int64))
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.broadcast(out, src=0)
    return images, out


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

    t, K = cfg.train, cfg.model.n_clusters
    if t.reseed_min_fraction <= 0:
        return []
    mu, logvar = latent_moments(net, init_batches(feeder, t, device, -2 - epoch), _channels_last(cfg, device))
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


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_weights(net: AstroVaDErNet, path: Path, metadata: dict[str, str] | None = None) -> None:
    _atomic_save_safetensors(net.state_dict(), path, {"format": "astrovader-weights", **(metadata or {})})


def load_weights(net: AstroVaDErNet, path: Path) -> None:
    state = load_file(str(path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config's architecture "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")


def _save_checkpoint(run_dir: Path, net: AstroVaDErNet, opt: torch.optim.Optimizer, epoch: int,
                     history: list[dict[str, Any]]) -> None:
    tensors = {f"model/{k}": v for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"optim/{pid}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {"format": "astrovader-checkpoint", "epoch": str(epoch),
            "param_groups": json.dumps(opt_state["param_groups"]), "history": json.dumps(history)}
    _atomic_save_safetensors(tensors, run_dir / CHECKPOINT, meta)
    save_weights(net, run_dir / WEIGHTS, {"epoch": str(epoch)})
    _write_history(run_dir / HISTORY, history)


def _load_checkpoint(run_dir: Path, net: AstroVaDErNet, opt: torch.optim.Optimizer,
                     device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    from safetensors import safe_open

    path = run_dir / CHECKPOINT
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("format") != "astrovader-checkpoint":
        raise ValueError(f"{path}: not an astrovader checkpoint")
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v.to(device) if name != "step" else v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["epoch"]), json.loads(meta["history"])


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    with open(Path(run_dir) / HISTORY, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k not in ("phase", "reseeded") and v not in ("", None):
                r[k] = int(v) if k == "epoch" else float(v)
    return rows


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch + 7919) % (2**63 - 1)


def _channels_last(cfg: Config, device: torch.device) -> bool:
    return cfg.train.channels_last and device.type in ("cuda", "cpu")


def _use_bf16(cfg: Config, device: torch.device) -> bool:
    return cfg.train.bf16 and fast_bf16(device)


@functools.cache
def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: CUDA GPUs with bf16 support, and CPUs with native
    bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs bf16 convolutions about twice as fast.
    Cached: it is asked for every validation batch and reads /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)
    return False


def split_indices(ds: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows: the dataset's ``split`` column if present, else a seeded fraction."""
    if "split" in ds.catalog.columns:
        train = ds.split_indices("train")
        if len(train) == 0:
            raise ValueError(f"{ds.path}: the catalogue's 'split' column has no 'train' rows")
        return train, ds.split_indices("validation")
    n = len(ds)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = int(round(n * cfg.validation_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class TrainResult:
    net: AstroVaDErNet
    history: list[dict[str, Any]]
    run_dir: Path


@dataclass(frozen=True)
class DistInfo:
    """Data-parallel layout. One process per device; ``world == 1`` is the ordinary single-device run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_setup() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else run alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_reduce_(t: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_parameters(net: AstroVaDErNet, dist_info: DistInfo) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for p in net.state_dict().values():
                dist.broadcast(p, src=0)


def train(cfg: Config, dataset: str | Path | Dataset, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, stop_after_epoch: int | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or continue training) a model on ``dataset``, writing everything to ``run_dir``.

    ``stop_after_epoch`` ends the run early after that epoch, as a kill would (for tests and for
    splitting a long run into sessions); the run can then be resumed.

    Under ``torchrun --nproc-per-node N`` the global batch ``train.batch_size`` is split over N ranks.
    Every rank draws the same global permutation, flips and reparameterisation noise and uses its slice,
    gradients are averaged with one coalesced all-reduce per step, the GMM initialisation runs on rank 0
    and is broadcast, and only rank 0 writes checkpoints: an N-rank run follows the 1-rank run with the
    same global batch up to floating-point summation order."""
    cfg.validate()
    dist_info = distributed_setup()
    ds = open_dataset(dataset)
    m, t = cfg.model, cfg.train
    if (ds.image_size, ds.channels) != (m.image_size, m.channels):
        raise ValueError(f"dataset {ds.path} has {ds.channels}-channel {ds.image_size}px images but the config "
                         f"expects model.channels={m.channels}, model.image_size={m.image_size}; set those keys "
                         "or re-ingest with --size")
    if t.batch_size % dist_info.world:
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the number of ranks "
                         f"({dist_info.world})")
    run_dir = Path(run_dir)
    device = resolve_device(t.device)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(t.seed)
    net = AstroVaDErNet(cfg).to(device)
    cl = _channels_last(cfg, device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    if not t.learn_weights:
        net.gmm.logits.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=t.lr)

    history: list[dict[str, Any]] = []
    start = 0
    if resume and (run_dir / CHECKPOINT).exists():
        saved = Config.from_toml(run_dir / CONFIG)
        if saved.model != cfg.model:
            raise ValueError(f"{run_dir}: cannot resume with a different [model] section than the run's "
                             f"{CONFIG}; resume with --config {run_dir / CONFIG}")
        start, history = _load_checkpoint(run_dir, net, opt, device)
        start += 1
        history = history[:start]
    elif (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                              "or choose a new run directory")
    _broadcast_parameters(net, dist_info)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
        if start == 0:
            (run_dir / "dataset.txt").write_text(str(Path(ds.path).resolve()) + "\n")

    train_idx, val_idx = split_indices(ds, t)
    if len(train_idx) < t.batch_size:
        raise ValueError(f"{len(train_idx)} training images is fewer than train.batch_size={t.batch_size}")
    feeder = BatchFeeder(ds, train_idx, device, t.max_resident_gb)
    val_idx = val_idx[dist_info.rank::dist_info.world]
    val_feeder = BatchFeeder(ds, val_idx, device, t.max_resident_gb) if len(val_idx) else None

    step_fn = _make_step(net, opt, cfg, device, dist_info)
    shard = (dist_info.rank, dist_info.world)
    plans = schedule(cfg)
    # the last epoch of each annealing + static period: where empty mixture components are re-seeded
    period = t.anneal_epochs + t.static_epochs
    first = t.gamma_epochs + t.align_epochs
    period_ends = {first + (k + 1) * period - 1 for k in range(t.periods)} if period else set()
    align_set: tuple[torch.Tensor, torch.Tensor] | None = None
    init_labels: np.ndarray | None = None
    tb = _tensorboard(run_dir) if t.tensorboard and dist_info.is_main else None
    bar = tqdm(total=len(plans), initial=start, desc="training", unit="epoch",
               disable=not progress or not dist_info.is_main, dynamic_ncols=True)
    try:
        for plan in plans[start:]:
            t0 = time.perf_counter()
            g = torch.Generator(device=device).manual_seed(_epoch_seed(t.seed, plan.epoch))
            torch.manual_seed(_epoch_seed(t.seed, plan.epoch) + 1)
            for group in opt.param_groups:
                group["lr"] = plan.lr
            net.train()
            sums = torch.zeros(5, device=device, dtype=torch.float64)
            if plan.phase == "align":
                if align_set is None:
                    align_set = _alignment_set(feeder, cfg, device, run_dir, dist_info, init_labels)
                images, labels = align_set
                for pos in _positions(len(images), t.batch_size, g, shard):
                    sums += step_fn(to_float(images[pos], cl), plan, g, labels[pos])
            else:
                align_set = None  # frees the alignment images once that phase is over
                for xb in feeder.batches(t.batch_size, g, shard=shard):
                    sums += step_fn(to_float(xb, cl), plan, g)
            _all_reduce_(sums, dist_info)
            train_means = (sums[:4] / sums[4].clamp_min(1)).tolist()  # the one host sync of the epoch
            row: dict[str, Any] = {
                "epoch": plan.epoch, "phase": plan.phase, "beta": plan.beta,
                "kl_weight": plan.kl_gmm_weight if plan.phase != "gamma" else plan.kl_unit_weight,
                "lr": plan.lr, "train_total": train_means[0], "train_recon": train_means[1],
                "train_kl_unit": train_means[2], "train_kl_gmm": train_means[3]}
            if not all(math.isfinite(v) for v in train_means):
                raise TrainingDiverged(
                    f"non-finite loss in epoch {plan.epoch} ({plan.phase} phase): total={train_means[0]}, "
                    f"recon={train_means[1]}, kl_unit={train_means[2]}, kl_gmm={train_means[3]}; the last "
                    f"good checkpoint (epoch {plan.epoch - 1}) is kept in {run_dir}. Try a smaller train.lr "
                    "or train.clip_value.")
            if val_feeder is not None or dist_info.world > 1:
                v = evaluate(net, val_feeder, cfg, plan, device, dist_info=dist_info)
                if v is not None:
                    row.update(val_total=v[0], val_recon=v[1], val_kl_unit=v[2], val_kl_gmm=v[3])
            if plan.phase == "gamma" and plan.epoch == t.gamma_epochs - 1:
                if dist_info.is_main:
                    init_labels = initialise_gmm(net, feeder, cfg, device)
                    if t.align_epochs:
                        _atomic_save_safetensors({"labels": torch.from_numpy(init_labels)}, run_dir / INIT_CLUSTERS,
                                                 {"format": "astrovader-init-clusters"})
                _broadcast_parameters(net, dist_info)
            elif plan.epoch in period_ends and t.reseed_min_fraction > 0:
                if dist_info.is_main:
                    pairs = reseed_empty_components(net, feeder, cfg, device, plan.epoch)
                    row["reseeded"] = " ".join(f"{d}<{c}" for d, c in pairs)
                    if pairs:
                        tqdm.write(f"epoch {plan.epoch}: re-seeded (almost) empty mixture components by splitting "
                                   f"the most populous (empty<split): {row['reseeded']}")
                _broadcast_parameters(net, dist_info)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if dist_info.is_main:
                _save_checkpoint(run_dir, net, opt, plan.epoch, history)
            _barrier(dist_info)
            if tb is not None:
                for k, val in row.items():
                    if isinstance(val, float):
                        tb.add_scalar(k, val, plan.epoch)
            if on_epoch_end:
                on_epoch_end(row)
            bar.update(1)
            bar.set_postfix(phase=plan.phase, loss=f"{row['train_total']:.4g}",
                            recon=f"{row['train_recon']:.4g}")
            if stop_after_epoch is not None and plan.epoch >= stop_after_epoch:
                break
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    return TrainResult(net, history, run_dir)


def _make_step(net: AstroVaDErNet, opt: torch.optim.Optimizer, cfg: Config, device: torch.device,
               dist_info: DistInfo = DistInfo()) -> Callable[[torch.Tensor, EpochPlan, torch.Generator],
                                                              torch.Tensor]:
    lo, t = cfg.loss, cfg.train
    use_bf16 = _use_bf16(cfg, device)
    forward = net.forward
    if t.compile and device.type == "cuda":
        try:
            forward = torch.compile(net.forward)
        except Exception:  # pragma: no cover - compile is an optional speed-up
            forward = net.forward
    params = [p for group in opt.param_groups for p in group["params"]]  # the trained ones (train.learn_weights)
    shard = (dist_info.rank, dist_info.world)
    J = cfg.model.latent_dim

    def step(x: torch.Tensor, plan: EpochPlan, g: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One optimiser step on this rank's slice ``x`` of a global batch; returns loss sums and count.
        ``labels`` (alignment phase) are the images' initial clusters, used as q(c|x) in the GMM KL."""
        gmm_phase = plan.phase != "gamma"
        n_global = x.shape[0] * dist_info.world
        # Random numbers are drawn for the whole global batch (same generator state on every rank) and
        # sliced, so the result does not depend on how many ranks share the batch.
        x = augment(x, g, t, shard)
        sample = gmm_phase or not t.decode_mean_in_gamma
        eps = _shard(torch.randn(n_global, J, device=device, generator=g), shard) if sample else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = forward(x, sample=sample, eps=eps)
        gamma = F.one_hot(labels, cfg.model.n_clusters).float() if labels is not None else None
        terms = vade_losses(net, x, out, lo, gmm_phase, gamma)
        per_sample = (terms["recon"] + plan.kl_unit_weight * terms["kl_unit"]
                      + plan.kl_gmm_weight * terms["kl_gmm"])
        if labels is not None and t.align_ce_weight > 0:
            # The KL only pulls z towards its label's component; this also makes the label the prior's most
            # probable component for mu, which is what predictions use (MNIST: posterior/label agreement
            # 0.925 -> 0.944, and 0.03 -> 0.01 accuracy lost between the labels and the aligned model).
            logits = net.gmm.log_joint(out["mu"].float())
            per_sample = per_sample + t.align_ce_weight * F.cross_entropy(logits, labels, reduction="none")
        loss = per_sample.mean()
        if lo.l2 > 0:
            loss = loss + lo.l2 * net.l2_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist_info.world > 1:
            grads = [p.grad for p in params if p.grad is not None]
            flat = torch.cat([gr.reshape(-1) for gr in grads])
            _all_reduce_(flat, dist_info).div_(dist_info.world)
            offset = 0
            for gr in grads:
                gr.copy_(flat[offset:offset + gr.numel()].view_as(gr))
                offset += gr.numel()
        if gmm_phase and t.clip_value > 0:
            torch.nn.utils.clip_grad_value_(params, t.clip_value)
        opt.step()
        with torch.no_grad():
            n = x.shape[0]
            return torch.stack([loss.detach().double() * n, terms["recon"].detach().double().sum(),
                                terms["kl_unit"].detach().double().sum(), terms["kl_gmm"].detach().double().sum(),
                                torch.tensor(float(n), dtype=torch.float64, device=device)])

    return step


@torch.no_grad()
def evaluate(net: AstroVaDErNet, feeder: BatchFeeder | None, cfg: Config, plan: EpochPlan,
             device: torch.device, batch_size: int = 512, dist_info: DistInfo = DistInfo()) -> list[float] | None:
    """Mean validation loss terms with z = mu (deterministic), weighted as in the epoch's phase.
    Each rank evaluates its share of the validation rows; the sums are combined."""
    net.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    batches = feeder.batches(batch_size, g, shuffle=False, drop_last=False) if feeder is not None else ()
    for xb in batches:
        x = to_float(xb, _channels_last(cfg, device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_use_bf16(cfg, device)):
            out = net(x, sample=False)
        terms = vade_losses(net, x, out, cfg.loss, gmm_phase=plan.phase != "gamma")
        total = terms["recon"] + plan.kl_unit_weight * terms["kl_unit"] + plan.kl_gmm_weight * terms["kl_gmm"]
        sums += torch.stack([total.double().sum(), terms["recon"].double().sum(),
                             terms["kl_unit"].double().sum(), terms["kl_gmm"].double().sum(),
                             torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
    _all_reduce_(sums, dist_info)
    if sums[4] == 0:
        return None
    return (sums[:4] / sums[4]).tolist()


def _tensorboard(run_dir: Path):  # pragma: no cover - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        import warnings

        warnings.warn("train.tensorboard = true but the tensorboard package is not installed "
                      "(pip install 'astrovader[tensorboard]'); continuing without it", stacklevel=2)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
