"""astrovader: unsupervised galaxy morphology and synthetic galaxies with a convolutional VaDE (AstroVaDEr).

The main entry points are :class:`AstroVaDEr` (the estimator), :class:`Config` (validated settings and
presets) and :class:`Dataset` (the packed on-disk image format)."""

__version__ = "0.1.0"

from astrovader.config import Config, ConfigError  # noqa: E402
from astrovader.data.dataset import Dataset  # noqa: E402
from astrovader.estimator import AstroVaDEr  # noqa: E402

__all__ = ["AstroVaDEr", "Config", "ConfigError", "Dataset", "__version__"]
