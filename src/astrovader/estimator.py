"""The Python API, in the style of scikit-learn's estimators: a thin facade over training, the inference path,
the sampler and exploration::

    from astrovader import AstroVaDEr, Config
    model = AstroVaDEr(Config.preset("demo")).fit("galaxies/")   # a dataset directory
    p = model.predict_proba(images)                               # (N, K) cluster probabilities
    imgs, comps = model.sample(16, cluster=2, seed=0)             # synthetic galaxies
    model.save("run/"); model = AstroVaDEr.load("run/")
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from astrovader.config import Config
from astrovader.data.dataset import Dataset, write_dataset
from astrovader.explore import interpolate, traverse
from astrovader.inference import as_float_images, decode, infer, reconstruct
from astrovader.model import AstroVaDErNet
from astrovader.predict import predict_dataset
from astrovader.runs import CONFIG, HISTORY, WEIGHTS, load_network, read_history, save_weights
from astrovader.runtime import resolve_device
from astrovader.sampling import DEFAULT_BATCH, GenerationSpec, sample
from astrovader.train import train

ImagesLike = np.ndarray | torch.Tensor | Dataset | str | Path


class AstroVaDEr:
    """A convolutional VaDE with a Gaussian-mixture prior, trained with the s3VDC schedule."""

    def __init__(self, config: Config | str | None = None, *, device: str | None = None):
        if isinstance(config, str):
            config = Config.preset(config)
        self.config = config or Config()
        if device is not None:
            self.config.train.device = device
        self.config.validate()
        self.device = resolve_device(self.config.train.device)
        self.net = AstroVaDErNet(self.config).to(self.device)
        self.history_: list[dict] = []
        self.run_dir_: Path | None = None

    # fitting --------------------------------------------------------------------------------------
    def fit(self, dataset: ImagesLike, run_dir: str | Path | None = None, *, resume: bool = False,
            progress: bool = True) -> AstroVaDEr:
        """Train on a dataset directory (or uint8 array); checkpoints go to ``run_dir`` (a temporary
        directory when omitted)."""
        if not isinstance(dataset, Dataset | str | Path):
            tmp = Path(tempfile.mkdtemp(prefix="astrovader-data-"))
            arr = np.asarray(dataset)
            if arr.dtype != np.uint8:
                arr = np.clip(np.rint(as_float_images(arr).numpy() * 255), 0, 255).astype(np.uint8)
            dataset = write_dataset(tmp / "dataset", arr)
        run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="astrovader-run-"))
        result = train(self.config, dataset, run_dir, resume=resume, progress=progress)
        self.net, self.history_, self.run_dir_ = result.net, result.history, run_dir
        self.device = next(self.net.parameters()).device
        return self

    # inference (streamed: a dataset directory is never loaded whole) ------------------------------
    def transform(self, x: ImagesLike, batch_size: int = 1024) -> np.ndarray:
        """Latent means, shape (N, J)."""
        return infer(self.net, x, batch_size=batch_size, reconstruct=False).mu

    def predict_proba(self, x: ImagesLike, batch_size: int = 1024) -> np.ndarray:
        """Exact posterior cluster probabilities q(c|x), shape (N, K)."""
        return infer(self.net, x, batch_size=batch_size, reconstruct=False).probs

    def predict(self, x: ImagesLike, batch_size: int = 1024) -> np.ndarray:
        """Most probable component of each image, shape (N,)."""
        return self.predict_proba(x, batch_size).argmax(1)

    def reconstruct(self, x: ImagesLike, batch_size: int = 512) -> np.ndarray:
        """Decoded latent means as float images in [0, 1], shape (N, C, H, W)."""
        return reconstruct(self.net, x, batch_size=batch_size)

    def decode(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Images in [0, 1] for latent vectors z, shape (N, J) -> (N, C, H, W)."""
        return decode(self.net, z)

    def sample(self, n: int, cluster: int | Sequence[int] | None = None, *, temperature: float = 1.0,
               seed: int | None = None, weights: str = "mixture") -> tuple[np.ndarray, np.ndarray]:
        """Synthetic galaxies: c drawn from the mixture weights (``weights="uniform"``: uniformly), or fixed /
        cycled through ``cluster``; z ~ N(mu_c, temperature * var_c), decoded. Returns (images in [0, 1] of shape
        (n, C, H, W), components (n,)). For a given ``seed`` these are exactly the images
        ``astrovader generate RUN OUT --n n --seed seed`` writes (as uint8 / 255); ``seed=None`` draws one."""
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        clusters = None if cluster is None else tuple(int(c) for c in np.atleast_1d(cluster))
        imgs, comps, _ = sample(self.net, n, GenerationSpec(clusters, weights, float(temperature), int(seed)),
                                DEFAULT_BATCH)
        return imgs.astype(np.float32) / np.float32(255), comps.astype(np.int64)

    def interpolate(self, a: np.ndarray | ImagesLike, b: np.ndarray | ImagesLike, steps: int = 8) -> np.ndarray:
        """Decoded straight line in latent space from ``a`` to ``b`` (latent vectors of shape (J,), or single
        images, which are encoded to their latent means first): (steps, C, H, W) images in [0, 1]."""
        return interpolate(self.net, self._as_latent(a), self._as_latent(b), steps)

    def traverse(self, latents: np.ndarray | ImagesLike, steps: int = 9) -> np.ndarray:
        """Each latent variable from its minimum to its maximum over ``latents`` (an (N, J) array, or images /
        a dataset that are encoded first), the others at their mean: (J, steps, C, H, W) images."""
        lat = latents if isinstance(latents, np.ndarray) and latents.ndim == 2 else self.transform(latents)
        return traverse(self.net, lat, steps)

    def _as_latent(self, x: np.ndarray | ImagesLike) -> np.ndarray:
        arr = x if isinstance(x, Dataset | str | Path) else np.asarray(x)
        J = self.config.model.latent_dim
        if isinstance(arr, np.ndarray) and arr.shape in ((J,), (1, J)):
            return arr.reshape(J)
        if isinstance(arr, np.ndarray) and arr.ndim in (2, 3) and arr.shape[0] != 1:
            arr = arr[None]  # one (C, H, W) or (H, W) image
        return self.transform(arr)[0]

    def predict_catalog(self, dataset: str | Path | Dataset, out: str | Path, batch_size: int = 1024,
                        progress: bool = True, overwrite: bool = False) -> Path:
        """Write the prediction catalogue of ``dataset`` to ``out`` (.parquet or .fits; an existing file only with
        ``overwrite``); see ``astrovader predict``."""
        return predict_dataset(self.net, dataset, out, batch_size=batch_size, progress=progress, overwrite=overwrite)

    # persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG)
        meta = {"epoch": str(self.history_[-1]["epoch"])} if self.history_ else None
        save_weights(self.net, directory / WEIGHTS, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> AstroVaDEr:
        directory = Path(directory)
        cfg, net = load_network(directory, device)
        cfg.train.device = device or "auto"
        model = cls.__new__(cls)
        model.config, model.net, model.device = cfg, net, next(net.parameters()).device
        model.run_dir_ = directory
        model.history_ = read_history(directory) if (directory / HISTORY).is_file() else []
        return model
