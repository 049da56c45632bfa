"""Validated settings for a model and its s3VDC training.

A config is three sections, ``model``, ``loss`` and ``train``, stored as TOML in every run directory.
:data:`astrovader.presets.PRESETS` is the one registry of named configurations: ``paper`` is the paper's model as
recovered from the authors' configuration and code, ``demo`` trains on 32 px simulated galaxies in minutes on a
laptop CPU, ``sdss64-k12`` / ``sdss64-k3`` are the settings measured on real SDSS galaxies (with the stamp recipe
they were measured with), ``gz2-64`` those for Petrosian-scaled Galaxy Zoo 2 cut-outs, ``mnist`` and
``simulated`` those of the benchmarks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrovader.data.limits import MAX_STAMP_SIZE
from astrovader.errors import ConfigError
from astrovader.presets import get_preset


@dataclass
class ModelConfig:
    image_size: int = 128
    channels: int = 1
    encoder_filters: list[int] = field(default_factory=lambda: [64, 64, 16])
    encoder_kernels: list[int] = field(default_factory=lambda: [3, 5, 5])
    decoder_filters: list[int] = field(default_factory=lambda: [16, 64, 64])
    decoder_kernels: list[int] = field(default_factory=lambda: [5, 5, 5])
    output_kernel: int = 3
    latent_dim: int = 20
    n_components: int = 12
    covariance: str = "diag"  # GMM prior covariances: "diag" (VaDE, the paper) or "full"
    leaky_slope: float = 0.1
    upsample_first: bool = False  # decoder: up-sample before each block's convolutions (the paper's section 6)
    residual: bool = False  # ResNet blocks: each (conv, conv) block adds its input back (1x1 conv if widths differ)
    group_pooling: str = "none"  # encoder features averaged over quarter turns ("c4") and mirror images ("d4")


CONTRASTIVE_SIMILARITIES = ("cosine", "euclidean")  # loss.contrastive_similarity (model.nt_xent)


@dataclass
class LossConfig:
    reconstruction: str = "mse"  # "mse" (x D), "bce" or "calibrated" (Gaussian, sigma^2 = the batch's MSE)
    gmm_kl_scale: float = 0.3  # the reference code's extra weight on the GMM KL ("scale_jank")
    gamma: float = 5e-4  # weight of the unit-Gaussian KL in gamma-training, also added to beta^p
    l2: float = 0.01  # Keras-style L2 penalty: l2 * sum(w^2) over all conv and dense weights and biases
    minmax_scale: float = 50.0  # s3VDC inverse min-max: scaled matrix spans [-minmax_scale, 0]
    logvar_clamp: float = 20.0  # encoder log-variances are clamped to +-this to avoid exp overflow
    # Weight of an NT-Xent term between the latent means of two random views of each image (train.view_*): the
    # latents are pulled to agree across changes a galaxy's class does not depend on. 0 = off (the paper).
    contrastive: float = 0.0
    contrastive_temperature: float = 0.5  # NT-Xent temperature (divides the similarity below)
    contrastive_similarity: str = "cosine"  # "cosine" (SimCLR) or "euclidean" (-squared distance of latent means)
    # Neighbour consistency (SCAN) in the train.scan_epochs: weight of -log(q(c|x) . q(c|n)) for a random one of
    # each galaxy's nearest neighbours n in the latent space, and of the entropy of the batch's mean q(c|x).
    scan: float = 10.0
    scan_entropy: float = 5.0


@dataclass
class TrainConfig:
    batch_size: int = 180
    gamma_epochs: int = 100
    gmm_init_batches: int = 200
    anneal_epochs: int = 25
    static_epochs: int = 25
    periods: int = 5
    anneal_power: float = 3.0
    lr: float = 3e-4
    lr_min: float = 1e-6
    lr_decay_every: int = 5
    clip_value: float = 1.0  # gradient value clipping in the GMM (annealing/static) phases; 0 = off
    gmm_init: str = "fitted"  # "fitted": means, variances, weights of the GaussianMixture; "s3vdc": keep pi
    learn_weights: bool = True  # False: the optimiser leaves the mixture weights pi alone (1/K with "s3vdc")
    gmm_init_add_encoder_variance: bool = True  # GMM variances model z, not only its mean (see train.py)
    gmm_init_restarts: int = 10  # k-means n_init: cheap, and removes most bad local optima
    gmm_init_embedding: str = "none"  # "umap": find the initial clusters on a UMAP graph of the latents (train.py)
    gmm_init_neighbours: int = 20  # UMAP n_neighbors for gmm_init_embedding = "umap"
    align_epochs: int = 0  # after the GMM init: q(c|x) is the initial clustering's label, not the posterior
    align_ce_weight: float = 10.0  # alignment phase: weight of the cross-entropy of p(c|mu) against the label
    scan_epochs: int = 0  # after VaDE's periods: epochs of neighbour consistency (loss.scan); 0 = off
    scan_neighbours: int = 20  # how many nearest neighbours of each galaxy the scan epochs draw from
    reseed_min_fraction: float = 0.05  # end of each period: components with < this x N/K members are re-seeded
    decode_mean_in_gamma: bool = False  # s3VDC's code feeds the decoder mu in gamma-training; see README
    flips: bool = True
    augment_rotate: float = 0.0  # random rotation of each training image by up to +-this many degrees
    augment_shift: float = 0.0  # random shift of each training image by up to +-this many pixels per axis
    # The views of the contrastive term (loss.contrastive): each is turned by any angle and flipped at random, then
    view_scale: float = 0.3  # ... scaled by up to +-this fraction,
    view_shift: float = 1.0  # ... shifted by up to +-this many pixels per axis,
    view_blur: float = 1.0  # ... blurred by a Gaussian of sigma up to this many pixels,
    view_gain: float = 0.3  # ... multiplied by 10^u with |u| up to this (brightness / surface brightness),
    view_noise: float = 0.02  # ... and given Gaussian noise of sigma up to this (in units of the full range)
    validation_fraction: float = 0.0  # used only when the dataset has no `split` column
    seed: int = 0
    restarts: int = 1  # train this many models (seeds seed, seed + 1000, ...); keep the lowest final loss (train.py)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # bf16 autocast where the device has fast bf16 (CUDA; CPUs with AVX512-BF16/AMX)
    channels_last: bool = True  # NHWC memory layout (faster convolutions on CUDA and with oneDNN on CPU)
    compile: bool = False  # torch.compile the network (CUDA; falls back when unavailable)
    max_resident_gb: float = 4.0  # keep the uint8 training set on the device when it is smaller than this
    tensorboard: bool = False

    @property
    def epochs(self) -> int:
        return (self.gamma_epochs + self.align_epochs + self.periods * (self.anneal_epochs + self.static_epochs)
                + self.scan_epochs)


@dataclass
class Config:
    """All settings of a model and its training, validated, in three sections.

    Build one from a preset (:meth:`preset`), a TOML file (:meth:`from_toml`) or both with ``section.key=value``
    overrides (:meth:`resolve`, the command line's order). ``config.toml`` in every run directory is
    :meth:`to_toml`'s output.

    Parameters
    ----------
    model : ModelConfig
        The network and the mixture prior: stamp size, channels, filters and kernels, J (``latent_dim``), K
        (``n_components``) and the covariance type.
    loss : LossConfig
        The loss terms and their weights.
    train : TrainConfig
        The s3VDC schedule, optimiser, batching, augmentation and device.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # construction -------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Config:
        """The named preset's configuration.

        Parameters
        ----------
        name : str
            A preset's name (``astrovader presets`` lists them).

        Returns
        -------
        Config
            A new configuration.
        """
        return cls.from_dict(copy.deepcopy(get_preset(name).settings))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Config | None = None) -> Config:
        cfg = copy.deepcopy(base) if base is not None else cls()
        if not isinstance(data, dict):
            raise ConfigError("a config must be a table with sections [model], [loss], [train]")
        for section, values in data.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown config section {section!r}; allowed: {', '.join(_SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a table")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path, base: Config | None = None) -> Config:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a TOML config file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (not UTF-8); a config is TOML text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        try:
            return cls.from_dict(data, base=base)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def resolve(cls, preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | None = None) -> Config:
        """A preset, then a config file on top of it, then ``section.key=value`` overrides: the command line's order.

        Parameters
        ----------
        preset : str, optional
            A preset's name; the defaults when None.
        config_file : path-like, optional
            A TOML file with ``[model]``, ``[loss]`` and ``[train]`` tables.
        overrides : list of str, optional
            ``section.key=value`` settings, values parsed as TOML.

        Returns
        -------
        Config
            The validated configuration.
        """
        cfg = cls.preset(preset) if preset else cls()
        if config_file:
            cfg = cls.from_toml(config_file, base=cfg)
        return cfg.with_overrides(overrides)

    def with_overrides(self, overrides: list[str] | None) -> Config:
        """A validated copy with ``section.key=value`` settings applied.

        Parameters
        ----------
        overrides : list of str or None
            Settings such as ``train.seed=3`` or ``model.encoder_filters=[8,8]``; values are parsed as TOML.

        Returns
        -------
        Config
            A new configuration; this one is unchanged.
        """
        cfg = copy.deepcopy(self)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value (e.g. train.seed=3), got {item!r}")
            key, raw = item.split("=", 1)
            cfg.set(key.strip(), _parse_value(raw.strip()))
        cfg.validate()
        return cfg

    # access -------------------------------------------------------------------------------------
    def set(self, dotted: str, value: Any) -> None:
        if dotted in RENAMED_KEYS:
            warnings.warn(f"config key {dotted} is renamed {RENAMED_KEYS[dotted]}; read as that", FutureWarning,
                          stacklevel=2)
            dotted = RENAMED_KEYS[dotted]
        if "." not in dotted:
            raise ConfigError(f"config key {dotted!r} must be written section.key, e.g. train.epochs; "
                              f"sections: {', '.join(_SECTIONS)}")
        section, key = dotted.split(".", 1)
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {dotted!r}; allowed: {', '.join(_SECTIONS)}")
        target = getattr(self, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r}; keys in [{section}]: {', '.join(fields)}")
        default = getattr(type(target)(), key)
        setattr(target, key, _coerce(dotted, value, default))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        from astrovader.data.dataset import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_toml().encode())

    # validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        m, lo, t = self.model, self.loss, self.train
        for section in _SECTIONS:
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                _need(not isinstance(value, float) or math.isfinite(value), f"{section}.{f.name}",
                      f"must be a finite number, got {value}")
        blocks = len(m.encoder_filters)
        _need(blocks >= 1, "model.encoder_filters", "needs at least one block")
        for key in ("encoder_kernels", "decoder_filters", "decoder_kernels"):
            _need(len(getattr(m, key)) == blocks, f"model.{key}",
                  f"must have {blocks} entries (one per block, like model.encoder_filters)")
        for key in ("encoder_filters", "decoder_filters"):
            for v in getattr(m, key):
                _need(1 <= v <= 4096, f"model.{key}", f"filters must be in 1..4096, got {v}")
        for key in ("encoder_kernels", "decoder_kernels"):
            for v in getattr(m, key):
                _need(v >= 1 and v % 2 == 1, f"model.{key}", f"kernels must be odd and >= 1, got {v}")
        _need(m.output_kernel >= 1 and m.output_kernel % 2 == 1, "model.output_kernel", "must be odd and >= 1")
        step = 2**blocks
        _need(m.image_size >= step and m.image_size % step == 0, "model.image_size",
              f"must be a positive multiple of {step} (2^blocks for {blocks} pooling blocks), got {m.image_size}")
        _need(m.image_size <= MAX_STAMP_SIZE, "model.image_size",
              f"must be at most {MAX_STAMP_SIZE} pixels (stamps are cut-outs), got {m.image_size}")
        _need(m.channels in (1, 3), "model.channels", f"must be 1 (grey) or 3 (colour), got {m.channels}")
        _need(1 <= m.latent_dim <= 1024, "model.latent_dim", f"must be in 1..1024, got {m.latent_dim}")
        _need(1 <= m.n_components <= 1000, "model.n_components", f"must be in 1..1000, got {m.n_components}")
        _need(0 <= m.leaky_slope < 1, "model.leaky_slope", "must be in [0, 1)")
        _need(m.covariance in ("diag", "full"), "model.covariance", f"must be 'diag' or 'full', got {m.covariance!r}")
        _need(m.group_pooling in ("none", "c4", "d4"), "model.group_pooling",
              f"must be 'none', 'c4' or 'd4', got {m.group_pooling!r}")
        _need(lo.reconstruction in ("mse", "bce", "calibrated"), "loss.reconstruction",
              f"must be 'mse', 'bce' or 'calibrated', got {lo.reconstruction!r}")
        _need(lo.gmm_kl_scale > 0, "loss.gmm_kl_scale", "must be > 0")
        _need(lo.gamma >= 0, "loss.gamma", "must be >= 0")
        _need(lo.l2 >= 0, "loss.l2", "must be >= 0")
        _need(lo.minmax_scale > 0, "loss.minmax_scale", "must be > 0")
        _need(lo.logvar_clamp > 0, "loss.logvar_clamp", "must be > 0")
        _need(lo.contrastive >= 0, "loss.contrastive", "must be >= 0 (0 disables the contrastive term)")
        _need(lo.contrastive_temperature > 0, "loss.contrastive_temperature", "must be > 0")
        _need(lo.contrastive_similarity in CONTRASTIVE_SIMILARITIES, "loss.contrastive_similarity",
              f"must be one of {', '.join(CONTRASTIVE_SIMILARITIES)}")
        _need(lo.scan >= 0 and lo.scan_entropy >= 0, "loss.scan/scan_entropy", "must be >= 0")
        _need(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
        _need(t.gamma_epochs >= 1, "train.gamma_epochs", "must be >= 1 (the GMM is initialised after it)")
        _need(t.gmm_init_batches >= 1, "train.gmm_init_batches", "must be >= 1")
        _need(t.anneal_epochs >= 0 and t.static_epochs >= 0, "train.anneal_epochs/static_epochs", "must be >= 0")
        _need(t.periods >= 0, "train.periods", "must be >= 0")
        _need(t.anneal_power > 0, "train.anneal_power", "must be > 0")
        _need(t.lr > 0 and 0 < t.lr_min <= t.lr, "train.lr/lr_min", "need 0 < lr_min <= lr")
        _need(t.lr_decay_every >= 1, "train.lr_decay_every", "must be >= 1")
        _need(t.clip_value >= 0, "train.clip_value", "must be >= 0 (0 disables clipping)")
        _need(t.gmm_init in ("fitted", "s3vdc"), "train.gmm_init", "must be 'fitted' or 's3vdc'")
        _need(t.gmm_init_restarts >= 1, "train.gmm_init_restarts", "must be >= 1")
        _need(t.restarts >= 1, "train.restarts", "must be >= 1")
        _need(t.gmm_init_embedding in ("none", "umap"), "train.gmm_init_embedding", "must be 'none' or 'umap'")
        _need(t.gmm_init_neighbours >= 2, "train.gmm_init_neighbours", "must be >= 2")
        _need(t.align_epochs >= 0, "train.align_epochs", "must be >= 0")
        _need(t.scan_epochs >= 0, "train.scan_epochs", "must be >= 0")
        _need(t.scan_neighbours >= 1, "train.scan_neighbours", "must be >= 1")
        _need(t.align_ce_weight >= 0, "train.align_ce_weight", "must be >= 0")
        _need(0 <= t.reseed_min_fraction < 1, "train.reseed_min_fraction", "must be in [0, 1) (0 disables it)")
        _need(0 <= t.augment_rotate <= 180, "train.augment_rotate",
              f"must be in [0, 180] degrees, got {t.augment_rotate}")
        _need(0 <= t.augment_shift <= m.image_size / 2, "train.augment_shift",
              f"must be in [0, image_size / 2 = {m.image_size / 2:g}] pixels, got {t.augment_shift}")
        _need(0 <= t.view_scale < 1, "train.view_scale", f"must be in [0, 1), got {t.view_scale}")
        _need(0 <= t.view_shift <= m.image_size / 2, "train.view_shift",
              f"must be in [0, image_size / 2 = {m.image_size / 2:g}] pixels, got {t.view_shift}")
        _need(0 <= t.view_blur <= m.image_size / 4, "train.view_blur",
              f"must be in [0, image_size / 4 = {m.image_size / 4:g}] pixels, got {t.view_blur}")
        _need(0 <= t.view_gain <= 2, "train.view_gain", f"must be in [0, 2] dex, got {t.view_gain}")
        _need(0 <= t.view_noise <= 1, "train.view_noise", f"must be in [0, 1], got {t.view_noise}")
        _need(0 <= t.validation_fraction < 1, "train.validation_fraction", "must be in [0, 1)")
        _need(t.max_resident_gb >= 0, "train.max_resident_gb", "must be >= 0")
        dev = t.device
        _need(dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:"), "train.device",
              f"must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")


_SECTIONS = ("model", "loss", "train")
# Keys renamed since they were first written to runs' config.toml: still read, with a warning naming the new key.
RENAMED_KEYS = {"model.n_clusters": "model.n_components"}


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of the field's default, or raise a ConfigError naming the key."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is list:
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            if isinstance(value, int | float):
                value = [value]
            return [int(v) for v in value]
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare strings such as device=cpu


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
