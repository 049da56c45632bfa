"""The supervised ceiling: how much class information is there to find in the same stamps.

A clustering score alone cannot say whether the classes are separable in the images at all. These references are
fitted *with* the labels on the very galaxies the unsupervised methods were fitted on, and scored on the same
held-out galaxies, so every table shows the floor (k-means, PCA + GMM, brightness alone), the method, and the
ceiling side by side:

* ``cnn``: a small convolutional classifier (three conv blocks, global pooling, a linear layer) trained with
  cross-entropy, random flips and quarter turns;
* ``morph_logreg``: logistic regression on the statmorph / photutils measurements ``describe`` makes
  (concentration, asymmetry, Gini, M20, Sersic index, axis ratio, R50), measured once per set of images and
  cached;
* ``knn_pixels``: 10 nearest neighbours on 50 principal components of the pixels.

A supervised prediction is scored with the clustering metrics (Hungarian accuracy, NMI, ARI, purity): with one
predicted label per class the Hungarian match is the identity, so its accuracy is the classifier's accuracy.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from astrovader.analysis.metrics import clustering_scores
from astrovader.baselines import Task
from astrovader.errors import InputError

CEILINGS = ("cnn", "morph_logreg", "knn_pixels")
CEILING_NAMES = {"cnn": "CNN (supervised)", "morph_logreg": "morphology + LR (supervised)",
                 "knn_pixels": "kNN pixels (supervised)"}
MORPHOLOGY_FEATURES = ("concentration", "asymmetry", "gini", "m20", "sersic_n", "axis_ratio", "r50")


def run_ceiling(method: str, task: Task, seed: int, cache: Path | None = None) -> dict[str, Any]:
    """Fit supervised reference ``method`` on the task's fitting images with their labels; score it on the held-out
    ones. ``cache`` keeps the morphology measurements of a set of images for later seeds and runs."""
    fit, ev = task.fit_index, task.eval_index
    t0 = time.perf_counter()
    if method == "cnn":
        pred = cnn_classifier(task.images[fit], task.labels[fit], task.images[ev], seed)
    elif method == "morph_logreg":
        feats = morphology_features(task.images, cache)
        pred = _logistic(feats[fit], task.labels[fit], feats[ev], seed)
    elif method == "knn_pixels":
        pred = knn_pixels(task.images[fit], task.labels[fit], task.images[ev], seed)
    else:
        raise InputError(f"unknown ceiling {method!r}; choose from {', '.join(CEILINGS)}")
    result: dict[str, Any] = clustering_scores(task.labels[ev], pred)
    result.update(ok=True, nan=False, empty_components=0, supervised=True, seconds=time.perf_counter() - t0)
    return result


# --------------------------------------------------------------------------------------------------
# the three references
# --------------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Three (conv, conv, pool) blocks of 16 / 32 / 64 filters, global average pooling, a linear layer."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for cout in (16, 32, 64):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def cnn_classifier(images: np.ndarray, labels: np.ndarray, apply_to: np.ndarray, seed: int = 0, epochs: int = 30,
                   batch_size: int = 64, lr: float = 2e-3, min_steps: int = 300) -> np.ndarray:
    """Train :class:`SmallCNN` on uint8 ``images`` (N, C, H, W) with integer ``labels``; the predicted classes of
    ``apply_to``. Galaxies have no preferred handedness or orientation, so every batch is randomly flipped and
    turned by quarter turns (exact, no interpolation)."""
    classes, y = np.unique(labels, return_inverse=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = SmallCNN(images.shape[1], len(classes))
    batch_size = min(batch_size, len(images))
    per_epoch = len(images) // batch_size
    steps = max(epochs * per_epoch, min_steps)  # a small training set still gets enough steps (and BatchNorm stats)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(y)
    net.train()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(images), generator=g)
        idx = order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]
        x = _quarter_turns_and_flips(x_all[idx].float().div_(255.0), g)
        loss = F.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(apply_to[s:s + 512]).float().div_(255.0))
                            for s in range(0, len(apply_to), 512)])
    return classes[logits.argmax(1).numpy()]


def _quarter_turns_and_flips(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) turned by a random multiple of 90 degrees and flipped at random (square
    stamps: every one of the 8 symmetries of the square is exact)."""
    turns = torch.randint(0, 4, (len(x),), generator=g)
    flip = torch.rand(len(x), generator=g) < 0.5
    out = torch.where(flip[:, None, None, None], x.flip(-1), x)
    for k in (1, 2, 3):
        sel = turns == k
        if sel.any():
            out[sel] = torch.rot90(out[sel], k, dims=(-2, -1))
    return out


def _logistic(train: np.ndarray, labels: np.ndarray, apply_to: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # statmorph fails on a few stamps (no source, a bad fit): those get the median of the fitting galaxies
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(max_iter=2000, random_state=seed))
    return model.fit(train, labels).predict(apply_to)


def knn_pixels(train: np.ndarray, labels: np.ndarray, apply_to: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    pca = PCA(min(50, len(train) - 1, flat(train[:1]).shape[1]), random_state=seed).fit(flat(train))
    knn = KNeighborsClassifier(10).fit(pca.transform(flat(train)), labels)
    return knn.predict(pca.transform(flat(apply_to)))


# --------------------------------------------------------------------------------------------------
# morphology measurements, once per set of images
# --------------------------------------------------------------------------------------------------
def morphology_features(images: np.ndarray, cache: Path | None = None, n_jobs: int = -1) -> np.ndarray:
    """(N, 7) :data:`MORPHOLOGY_FEATURES` of uint8 ``images`` (statmorph's take ~0.1-0.2 s a stamp, so they are
    measured in parallel and, with ``cache``, kept in ``cache/morphology-<digest>.npy``; the digest is of the
    pixels, so another crop or subset is measured afresh)."""
    from joblib import Parallel, delayed

    from astrovader.analysis.morphology import measure

    path = None
    if cache is not None:
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
        path = Path(cache) / f"morphology-{digest}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
    chunks = np.array_split(np.arange(len(images)), max(1, len(images) // 200))
    frames = Parallel(n_jobs=n_jobs)(delayed(measure)(images[c]) for c in chunks)
    feats = np.concatenate([f[list(MORPHOLOGY_FEATURES)].to_numpy(np.float64) for f in frames])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats, allow_pickle=False)
        tmp.replace(path)
    return feats
