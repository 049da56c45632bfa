"""astrovader: unsupervised galaxy morphology and synthetic galaxies with a convolutional VaDE (AstroVaDEr)."""

__version__ = "0.1.0"
