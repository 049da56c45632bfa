"""astrovader: unsupervised galaxy morphology and synthetic galaxies with a convolutional VaDE (AstroVaDEr).

The main entry points are :class:`AstroVaDEr` (the estimator), :class:`Config` (validated settings and
presets), :class:`Dataset` (the packed on-disk image format) and :class:`Run` (a trained run, opened once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AstroVaDEr", "AstrovaderError", "Config", "ConfigError", "Dataset", "Run", "__version__"]

if TYPE_CHECKING:
    from astrovader.config import Config
    from astrovader.data.dataset import Dataset
    from astrovader.errors import AstrovaderError, ConfigError
    from astrovader.estimator import AstroVaDEr
    from astrovader.runs import Run

_LAZY = {"AstroVaDEr": "astrovader.estimator", "AstrovaderError": "astrovader.errors", "Config": "astrovader.config",
         "ConfigError": "astrovader.errors", "Dataset": "astrovader.data.dataset", "Run": "astrovader.runs"}


def __getattr__(name: str) -> Any:
    # Imported on first use so that data-only commands and worker processes do not pay for torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'astrovader' has no attribute {name!r}")
