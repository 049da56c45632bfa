"""How a dataset's stored 8-bit pixels relate to linear flux, and the inverse used to measure on linear flux.

Stored stamps are display-stretched (an asinh stretch, like the SDSS colour JPEGs, keeps faint outskirts visible
in 256 grey levels), which flattens light profiles: sizes, concentrations and Sersic indices measured on them are
not those of the galaxy. A dataset whose writer knows its stretch records it in ``dataset.json`` as
``pixel_stretch``::

    {"kind": "asinh", "zero": 0.06, "span": 0.94, "softening": 12.0, "maximum": 2500.0, "unit": "counts"}

meaning ``stored / 255 = zero + span * asinh(flux / softening) / asinh(maximum / softening)`` (``kind =
"linear"``: ``zero + span * flux / maximum``), with ``flux`` above the sky. :meth:`PixelStretch.flux` inverts
it. Measurements of datasets without a record are made on the stored values and are relative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from astrovader.errors import InputError

KINDS = ("asinh", "linear")


@dataclass(frozen=True)
class PixelStretch:
    """One fixed map from linear flux above the sky to stored grey levels (see the module docstring)."""

    kind: str
    zero: float
    span: float
    softening: float
    maximum: float
    unit: str = "counts"

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not (self.span > 0 and self.maximum > 0 and self.softening > 0):
            raise InputError(f"pixel_stretch: kind must be one of {KINDS} with span, maximum and softening > 0, "
                             f"got {self}")

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PixelStretch | None:
        """The stretch a dataset's ``dataset.json`` records, or None when it records none (or a malformed one)."""
        rec = meta.get("pixel_stretch")
        if not isinstance(rec, dict):
            return None
        try:
            return cls(kind=str(rec["kind"]), zero=float(rec["zero"]), span=float(rec["span"]),
                       softening=float(rec["softening"]), maximum=float(rec["maximum"]),
                       unit=str(rec.get("unit", "counts")))
        except (KeyError, TypeError, ValueError):
            return None

    def forward(self, flux: np.ndarray) -> np.ndarray:
        """Stored values in [0, 1] (before rounding to 8 bits) of linear ``flux`` above the sky."""
        flux = np.asarray(flux, np.float64)
        if self.kind == "linear":
            v = flux / self.maximum
        else:
            v = np.arcsinh(flux / self.softening) / np.arcsinh(self.maximum / self.softening)
        return np.clip(self.zero + self.span * v, 0.0, 1.0)

    def flux(self, stored: np.ndarray) -> np.ndarray:
        """Linear flux above the sky of stored values (uint8 0..255, or floats in [0, 1])."""
        stored = np.asarray(stored)
        v = stored.astype(np.float64) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float64)
        t = (v - self.zero) / self.span
        if self.kind == "linear":
            return t * self.maximum
        return self.softening * np.sinh(t * np.arcsinh(self.maximum / self.softening))

    def grey_level_at_sky(self) -> float:
        """Flux of one 8-bit grey level at the sky (the data's own quantum there), in ``unit``."""
        return float(self.flux(np.array([self.zero + 1 / 255]))[0] - self.flux(np.array([self.zero]))[0])
