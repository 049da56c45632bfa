"""The Python API, in the style of scikit-learn's estimators::

    from astrovader import AstroVaDEr, Config
    model = AstroVaDEr(Config.preset("demo")).fit("galaxies/")   # a dataset directory
    p = model.predict_proba(images)                               # (N, K) cluster probabilities
    imgs, comps = model.sample(16, cluster=2)                     # synthetic galaxies
    model.save("run/"); model = AstroVaDEr.load("run/")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from astrovader.config import Config
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.model import AstroVaDErNet
from astrovader.predict import as_float_images, as_image_tensor, infer_images, predict_dataset
from astrovader.train import CONFIG, WEIGHTS, load_weights, resolve_device, save_weights, train

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
            from astrovader.data.dataset import write_dataset

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

    # inference ------------------------------------------------------------------------------------
    def _infer(self, x: ImagesLike, batch_size: int = 1024) -> dict[str, np.ndarray]:
        images = open_dataset(x).load() if isinstance(x, Dataset | str | Path) else as_image_tensor(x)
        self._check_shape(images)
        return infer_images(self.net, images, self.device, batch_size)

    def _check_shape(self, x: torch.Tensor | np.ndarray | None) -> None:
        m = self.config.model
        if x is not None and len(x) and tuple(x.shape[1:]) != (m.channels, m.image_size, m.image_size):
            raise ValueError(f"images have shape {tuple(x.shape[1:])}, the model expects "
                             f"({m.channels}, {m.image_size}, {m.image_size})")

    def transform(self, x: ImagesLike) -> np.ndarray:
        """Latent means, shape (N, J)."""
        return self._infer(x)["mu"]

    def predict_proba(self, x: ImagesLike) -> np.ndarray:
        """Exact posterior cluster probabilities q(c|x), shape (N, K)."""
        return self._infer(x)["probs"]

    def predict(self, x: ImagesLike) -> np.ndarray:
        """Most probable component of each image."""
        return self.predict_proba(x).argmax(1)

    @torch.no_grad()
    def reconstruct(self, x: ImagesLike, batch_size: int = 512) -> np.ndarray:
        """Decoded latent means as float images in [0, 1], shape (N, C, H, W)."""
        t = as_float_images(open_dataset(x).load() if isinstance(x, Dataset | str | Path) else x)
        self._check_shape(t)
        self.net.eval()
        out = [self.net.decode(self.net.encode(t[s:s + batch_size].to(self.device))[0]).float().clamp(0, 1).cpu()
               for s in range(0, len(t), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, *t.shape[1:]), np.float32)

    @torch.no_grad()
    def decode(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Images in [0, 1] for latent vectors z, shape (N, J) -> (N, C, H, W)."""
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.device)
        return self.net.eval().decode(zt).float().clamp(0, 1).cpu().numpy()

    @torch.no_grad()
    def sample(self, n: int, cluster: int | list[int] | None = None, *, temperature: float = 1.0,
               seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic galaxies: c from the mixture weights (or fixed/cycled through ``cluster``),
        z ~ N(mu_c, temperature * var_c), decoded. Returns (images in [0, 1], components)."""
        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
        gmm = self.net.gmm
        K = self.config.model.n_clusters
        if cluster is None:
            comps = torch.multinomial(gmm.weights.detach().cpu().float(), n, replacement=True, generator=g)
        else:
            chosen = torch.as_tensor(np.atleast_1d(cluster), dtype=torch.long)
            if chosen.min() < 0 or chosen.max() >= K:
                raise ValueError(f"cluster must be in 0..{K - 1}, got {cluster}")
            comps = chosen.repeat(n // len(chosen) + 1)[:n]
        means = gmm.means.detach().cpu().float()[comps]
        eps = torch.randn(means.shape, generator=g)
        L = gmm.scale_tril.detach().cpu().float()[comps]
        z = means + temperature**0.5 * (L @ eps[..., None]).squeeze(-1)
        return self.decode(z), comps.numpy()

    def interpolate(self, a: np.ndarray | ImagesLike, b: np.ndarray | ImagesLike, steps: int = 8) -> np.ndarray:
        """Decoded straight line in latent space from ``a`` to ``b`` (latent vectors of shape (J,), or single
        images, which are encoded to their latent means first): (steps, C, H, W) images in [0, 1]."""
        from astrovader.generate import interpolate

        return interpolate(self, self._as_latent(a), self._as_latent(b), steps)

    def traverse(self, latents: np.ndarray | ImagesLike, steps: int = 9) -> np.ndarray:
        """Each latent variable from its minimum to its maximum over ``latents`` (an (N, J) array, or images /
        a dataset that are encoded first), the others at their mean: (J, steps, C, H, W) images."""
        from astrovader.generate import traverse

        lat = latents if isinstance(latents, np.ndarray) and latents.ndim == 2 else self.transform(latents)
        return traverse(self, lat, steps)

    def _as_latent(self, x: np.ndarray | ImagesLike) -> np.ndarray:
        arr = x if isinstance(x, Dataset | str | Path) else np.asarray(x)
        J = self.config.model.latent_dim
        if isinstance(arr, np.ndarray) and arr.shape in ((J,), (1, J)):
            return arr.reshape(J)
        if isinstance(arr, np.ndarray) and arr.ndim in (2, 3) and arr.shape[0] != 1:
            arr = arr[None]  # one (C, H, W) or (H, W) image
        return self.transform(arr)[0]

    def predict_catalog(self, dataset: str | Path | Dataset, out: str | Path, batch_size: int = 1024,
                        progress: bool = True) -> Path:
        return predict_dataset(self.net, dataset, out, device=self.device, batch_size=batch_size,
                               progress=progress)

    # persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG)
        save_weights(self.net, directory / WEIGHTS)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> AstroVaDEr:
        directory = Path(directory)
        if not (directory / WEIGHTS).is_file():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS}; is this a run directory written by "
                                    "`astrovader train`?")
        model = cls(Config.from_toml(directory / CONFIG), device=device or "auto")
        load_weights(model.net, directory / WEIGHTS)
        model.net.to(model.device).eval()
        model.run_dir_ = directory
        if (directory / "history.csv").is_file():
            from astrovader.train import read_history

            model.history_ = read_history(directory)
        return model
