"""The Python API, in the style of scikit-learn's estimators: a thin facade over training, the inference path,
the sampler and exploration::

    from astrovader import AstroVaDEr, Config
    model = AstroVaDEr(Config.preset("demo")).fit("galaxies/")   # a dataset directory
    p = model.predict_proba(images)                               # (N, K) component probabilities
    p = model.predict_proba(fluxes, flux=True)                    # calibrated fluxes: the ingest's stretch first
    imgs, comps = model.sample(16, component=2, seed=0)             # synthetic galaxies
    model.weights_, model.means_, model.covariances_              # the mixture prior, as in sklearn.mixture
    model.save("run/"); model = AstroVaDEr.load("run/")

Parameters follow scikit-learn's conventions: ``get_params`` / ``set_params`` (``config`` and ``device``, or any
setting as ``model__n_components=5``, ``train__epochs=50``), ``fit_predict``, and fitted attributes ending in
``_``, so the estimator works with ``sklearn.base.clone``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrovader.compute import resolve_device
from astrovader.config import Config
from astrovader.data.dataset import Dataset, write_dataset
from astrovader.data.decode import fits_stretch
from astrovader.errors import InputError
from astrovader.inference import as_float_images, decode, infer, reconstruct
from astrovader.latent_paths import interpolate, traverse
from astrovader.model import AstroVaDErNet
from astrovader.predict import predict_dataset
from astrovader.runs import CONFIG, HISTORY, WEIGHTS, Run, read_history, save_weights
from astrovader.sampling import DEFAULT_BATCH, GenerationSpec, sample
from astrovader.train import train

ImagesLike = np.ndarray | torch.Tensor | Dataset | str | Path


def _as_config(config: Config | str | None) -> Config:
    """A private Config: the named preset, a copy of the one given (the caller's stays untouched), or defaults."""
    return Config.preset(config) if isinstance(config, str) else copy.deepcopy(config or Config())


class AstroVaDEr:
    """A convolutional VaDE with a Gaussian-mixture prior, trained with the s3VDC schedule.

    Follows scikit-learn's estimator conventions: ``fit``, ``predict``, ``predict_proba``, ``fit_predict``,
    ``get_params`` / ``set_params``, and fitted attributes ending in an underscore.

    Parameters
    ----------
    config : Config, str or None, default None
        The settings: a :class:`Config`, a preset's name (``astrovader presets`` lists them), or None for the
        defaults (the paper's model). A copy is kept; the caller's Config is never changed.
    device : str, optional
        "auto" (a GPU when there is one), "cpu", "cuda", "cuda:N" or "mps"; overrides ``train.device``.

    Attributes
    ----------
    weights_ : ndarray of shape (K,)
        Mixture weights.
    means_ : ndarray of shape (K, J)
        Component means in the latent space.
    covariances_ : ndarray of shape (K, J) or (K, J, J)
        Component variances (``model.covariance = "diag"``) or covariance matrices (``"full"``).
    history_ : list of dict
        One row of losses per training epoch.
    run_dir_ : pathlib.Path
        The run directory the model was trained into or loaded from.
    """

    def __init__(self, config: Config | str | None = None, *, device: str | None = None):
        self._build(config, device)

    def _build(self, config: Config | str | None, device: str | None) -> None:
        self._config_arg, self._device_arg = config, device
        self.config = _as_config(config)
        if device is not None:
            self.config.train.device = device
        self.config.validate()
        self.device = resolve_device(self.config.train.device)
        self.net = AstroVaDErNet(self.config).to(self.device)
        self.history_: list[dict] = []
        self.run_dir_: Path | None = None
        self.fitted_ = False

    # scikit-learn's estimator protocol ----------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters.

        Parameters
        ----------
        deep : bool, default True
            Unused (there are no sub-estimators); kept for scikit-learn's protocol.

        Returns
        -------
        dict
            ``config`` (a Config or preset name) and ``device``.
        """
        return {"config": self._config_arg, "device": self._device_arg}

    def set_params(self, **params: Any) -> AstroVaDEr:
        """Set constructor parameters, or single settings as ``section__key=value``.

        The network is rebuilt untrained, as scikit-learn expects of a re-parameterised estimator.

        Parameters
        ----------
        **params
            ``config``, ``device``, or settings such as ``model__n_components=5`` and ``train__epochs=50``.

        Returns
        -------
        AstroVaDEr
            This estimator.
        """
        config, device = params.pop("config", self._config_arg), params.pop("device", self._device_arg)
        if params:
            base = _as_config(config)
            for key, value in params.items():
                section, sep, name = key.partition("__")
                part = getattr(base, section, None) if sep else None
                if part is None or not is_dataclass(part) or name not in {f.name for f in fields(part)}:
                    raise InputError(f"unknown parameter {key!r}: use config, device or SECTION__KEY such as "
                                     "model__n_components or train__epochs")
                setattr(getattr(base, section), name, value)
            config = base
        self._build(config, device)
        self.config.validate()
        return self

    def __repr__(self) -> str:
        m = self.config.model
        state = f"fitted, run_dir='{self.run_dir_}'" if self.fitted_ else "not fitted"
        return (f"AstroVaDEr(n_components={m.n_components}, latent_dim={m.latent_dim}, image_size={m.image_size}, "
                f"channels={m.channels}, covariance_type='{m.covariance}', device='{self.device}'; {state})")

    @property
    def n_components(self) -> int:
        """K, the number of mixture components."""
        return self.config.model.n_components

    @property
    def covariance_type(self) -> str:
        return self.config.model.covariance

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise AttributeError("this AstroVaDEr is not fitted yet: call fit(...) or AstroVaDEr.load(RUN_DIR)")

    @property
    def weights_(self) -> np.ndarray:
        """Mixture weights, shape (K,)."""
        self._check_fitted()
        return self.net.gmm.weights.detach().double().cpu().numpy()

    @property
    def means_(self) -> np.ndarray:
        """Component means in latent space, shape (K, J)."""
        self._check_fitted()
        return self.net.gmm.means.detach().double().cpu().numpy()

    @property
    def covariances_(self) -> np.ndarray:
        """Component covariances: (K, J) variances for ``covariance_type='diag'``, (K, J, J) for ``'full'``, as
        in ``sklearn.mixture.GaussianMixture``."""
        self._check_fitted()
        if self.covariance_type == "full":
            L = self.net.gmm.scale_tril.detach().double().cpu()
            return (L @ L.transpose(-1, -2)).numpy()
        return self.net.gmm.variances.detach().double().cpu().numpy()

    def fit_predict(self, dataset: ImagesLike, run_dir: str | Path | None = None, **fit_kwargs: Any) -> np.ndarray:
        """Fit, then predict the most probable component of the same images.

        Parameters
        ----------
        dataset : ndarray, Tensor, Dataset or path
            As for :meth:`fit`.
        run_dir : path-like, optional
            As for :meth:`fit`.
        **fit_kwargs
            Passed to :meth:`fit` (``resume``, ``progress``).

        Returns
        -------
        ndarray of shape (N,)
            The most probable component of each image.
        """
        return self.fit(dataset, run_dir, **fit_kwargs).predict(dataset)

    # fitting --------------------------------------------------------------------------------------
    def fit(self, dataset: ImagesLike, run_dir: str | Path | None = None, *, resume: bool = False,
            progress: bool = True) -> AstroVaDEr:
        """Train on images with the s3VDC schedule.

        Parameters
        ----------
        dataset : ndarray, Tensor, Dataset or path
            A dataset directory (or :class:`Dataset`), or images: uint8, or floats in [0, 1], of shape (N, C, H, W) or
            (N, H, W), row 0 the top of each image. A dataset's ``split`` column is honoured (train rows only).
        run_dir : path-like, optional
            Where the config, checkpoints, history and weights go (a temporary directory when omitted).
        resume : bool, default False
            Continue a killed run in ``run_dir`` from its last complete epoch.
        progress : bool, default True
            Show progress bars.

        Returns
        -------
        AstroVaDEr
            This estimator, fitted.
        """
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
        self.fitted_ = True
        return self

    # inference (streamed: a dataset directory is never loaded whole) ------------------------------
    def _images(self, x: ImagesLike, flux: bool) -> ImagesLike:
        """``x`` as the network reads it; ``flux=True`` takes float fluxes (N, C, H, W) or (N, H, W), row 0 at
        the top, and applies the ingest's FITS stretch to each image (0.5-99.5 percentile clip, asinh)."""
        if not flux:
            return x
        if isinstance(x, Dataset | str | Path):
            raise InputError("flux=True takes arrays of fluxes; a dataset directory is already stretched")
        arr = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
        arr = arr[:, None] if arr.ndim == 3 else arr
        m = self.config.model
        if arr.ndim != 4 or arr.shape[1:] != (m.channels, m.image_size, m.image_size):
            raise InputError(f"flux images must have shape (N, {m.channels}, {m.image_size}, {m.image_size}) for "
                             f"this model, got {arr.shape}; cut and resample them as astrovader ingest does")
        out = np.empty(arr.shape, np.uint8)
        for i, img in enumerate(arr):
            out[i] = np.rint(fits_stretch(img.transpose(1, 2, 0))).astype(np.uint8).transpose(2, 0, 1)
        return out

    def transform(self, x: ImagesLike, batch_size: int = 1024, *, flux: bool = False) -> np.ndarray:
        """Latent means of images.

        Parameters
        ----------
        x : ndarray, Tensor, Dataset or path
            uint8 or [0, 1] images of shape (N, C, H, W) or (N, H, W), or a dataset directory.
        batch_size : int, default 1024
            Images per forward pass.
        flux : bool, default False
            ``x`` holds calibrated fluxes, which get the ingest's FITS stretch first (0.5-99.5 percentile clip, asinh).

        Returns
        -------
        ndarray of shape (N, J)
            The latent means.
        """
        return infer(self.net, self._images(x, flux), batch_size=batch_size, reconstruct=False).mu

    def predict_proba(self, x: ImagesLike, batch_size: int = 1024, *, flux: bool = False) -> np.ndarray:
        """Exact posterior component probabilities q(c|x).

        Parameters
        ----------
        x : ndarray, Tensor, Dataset or path
            As for :meth:`transform`.
        batch_size : int, default 1024
            Images per forward pass.
        flux : bool, default False
            As for :meth:`transform`.

        Returns
        -------
        ndarray of shape (N, K)
            Probabilities; each row sums to 1.
        """
        return infer(self.net, self._images(x, flux), batch_size=batch_size, reconstruct=False).probs

    def predict(self, x: ImagesLike, batch_size: int = 1024, *, flux: bool = False) -> np.ndarray:
        """Most probable component of each image.

        Parameters
        ----------
        x : ndarray, Tensor, Dataset or path
            As for :meth:`transform`.
        batch_size : int, default 1024
            Images per forward pass.
        flux : bool, default False
            As for :meth:`transform`.

        Returns
        -------
        ndarray of shape (N,)
            Component indices in 0..K-1.
        """
        return self.predict_proba(x, batch_size, flux=flux).argmax(1)

    def reconstruct(self, x: ImagesLike, batch_size: int = 512) -> np.ndarray:
        """Decoded latent means of images.

        Parameters
        ----------
        x : ndarray, Tensor, Dataset or path
            As for :meth:`transform` (without ``flux``).
        batch_size : int, default 512
            Images per forward pass.

        Returns
        -------
        ndarray of shape (N, C, H, W)
            Float images in [0, 1].
        """
        return reconstruct(self.net, x, batch_size=batch_size)

    def decode(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Images for latent vectors.

        Parameters
        ----------
        z : ndarray or Tensor of shape (N, J)
            Latent vectors.

        Returns
        -------
        ndarray of shape (N, C, H, W)
            Float images in [0, 1].
        """
        return decode(self.net, z)

    def sample(self, n: int, component: int | Sequence[int] | None = None, *, temperature: float = 1.0,
               seed: int | None = None, weights: str = "mixture",
               cluster: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic galaxies drawn from the mixture prior.

        The component c is drawn from the mixture weights (or uniformly), or fixed / cycled through ``component``;
        z ~ N(mu_c, temperature * var_c) is decoded. For a given ``seed`` these are exactly the images
        ``astrovader generate RUN OUT --n n --seed seed`` writes (as uint8 / 255).

        Parameters
        ----------
        n : int
            Number of galaxies.
        component : int or sequence of int, optional
            Draw from these components only, cycled in order.
        temperature : float, default 1.0
            Scale of the latent variances (the authors' script used 0.5).
        seed : int, optional
            Random seed; None draws one.
        weights : {"mixture", "uniform"}, default "mixture"
            How the component of each galaxy is drawn when ``component`` is not given.
        cluster : int or sequence of int, optional
            The old name of ``component``.

        Returns
        -------
        images : ndarray of shape (n, C, H, W)
            Float images in [0, 1].
        components : ndarray of shape (n,)
            The component each image was drawn from.
        """
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        chosen = component if component is not None else cluster
        components = None if chosen is None else tuple(int(c) for c in np.atleast_1d(chosen))
        imgs, comps, _ = sample(self.net, n, GenerationSpec(components, weights, float(temperature), int(seed)),
                                DEFAULT_BATCH)
        return imgs.astype(np.float32) / np.float32(255), comps.astype(np.int64)

    def interpolate(self, a: np.ndarray | ImagesLike, b: np.ndarray | ImagesLike, steps: int = 8) -> np.ndarray:
        """Decoded straight line in the latent space from ``a`` to ``b``.

        Parameters
        ----------
        a, b : ndarray, Tensor, Dataset or path
            Latent vectors of shape (J,), or single images, which are encoded to their latent means first.
        steps : int, default 8
            Number of images along the line, ends included.

        Returns
        -------
        ndarray of shape (steps, C, H, W)
            Float images in [0, 1].
        """
        return interpolate(self.net, self._as_latent(a), self._as_latent(b), steps)

    def traverse(self, latents: np.ndarray | ImagesLike, steps: int = 9) -> np.ndarray:
        """Each latent variable from its minimum to its maximum, the others at their mean.

        Parameters
        ----------
        latents : ndarray of shape (N, J), or images or a dataset
            The latents whose range is traversed; images are encoded first.
        steps : int, default 9
            Images per variable.

        Returns
        -------
        ndarray of shape (J, steps, C, H, W)
            Float images in [0, 1].
        """
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
        """Write the prediction catalogue of a dataset (see ``astrovader predict``).

        Parameters
        ----------
        dataset : path-like or Dataset
            The images to classify.
        out : path-like
            ``.parquet`` or ``.fits``.
        batch_size : int, default 1024
            Images per forward pass.
        progress : bool, default True
            Show a progress bar.
        overwrite : bool, default False
            Replace an existing ``out``.

        Returns
        -------
        pathlib.Path
            ``out``.
        """
        return predict_dataset(self.net, dataset, out, batch_size=batch_size, progress=progress, overwrite=overwrite)

    # persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Save the config and weights as a run directory that :meth:`load` and every command read.

        Parameters
        ----------
        directory : path-like
            Created if missing.

        Returns
        -------
        pathlib.Path
            ``directory``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG)
        meta = {"epoch": str(self.history_[-1]["epoch"])} if self.history_ else None
        save_weights(self.net, directory / WEIGHTS, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> AstroVaDEr:
        """A trained model from its run directory, or a pretrained model by name.

        Parameters
        ----------
        directory : path-like or str
            A run directory, or a pretrained model's name (``astrovader presets``).
        device : str, optional
            As for the constructor (default "auto").

        Returns
        -------
        AstroVaDEr
            The fitted model.
        """
        run = Run.open(directory, device)
        cfg, net, directory = run.config, run.network, run.path
        cfg.train.device = device or "auto"
        model = cls.__new__(cls)
        model.config, model.net, model.device = cfg, net, next(net.parameters()).device
        model._config_arg, model._device_arg = cfg, device
        model.run_dir_, model.fitted_ = directory, True
        model.history_ = read_history(directory) if (directory / HISTORY).is_file() else []
        return model
