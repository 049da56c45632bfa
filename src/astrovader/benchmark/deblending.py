"""Deblending measured where the truth is known: simulated galaxies whose companions' positions are recorded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astrovader.data.dataset import Dataset
from astrovader.errors import InputError
from astrovader.inference import infer

if TYPE_CHECKING:
    pass



# --------------------------------------------------------------------------------------------------
# deblending, measured where the truth is known
# --------------------------------------------------------------------------------------------------
def deblending_on_simulation(run_dir: str | Path, dataset: str | Path | Dataset, n: int = 200,
                             companion_components: list[int] | None = None, steps: int = 8,
                             companion_radius: float = 3.0, progress: bool = False) -> dict[str, Any]:
    """How much of a companion the deblending figure removes, on simulated galaxies whose companions' positions
    are known (``astrovader simulate`` catalogues: ``companion_x``/``companion_y``, ``offset_x``/``offset_y`` in
    pixels from the centre, y up, and ``half_light_radius`` in arcsec).

    The ``n`` most probable members of the companion components (default: those ``describe`` flags) that truly
    have a companion are deblended. Sky-subtracted flux is measured in a circle of ``companion_radius`` px at the
    companion and in one of 2 x the galaxy's half-light radius (kept clear of the companion) at the galaxy, on
    the input, on its reconstruction (the start of the line) and on the end of the line. Returns the means and
    medians of the companion flux removed (1 - after / input) and of |central flux after / input - 1|."""
    from astrovader.analysis.describe import DescribeSettings, describe_components, pixel_scale_of
    from astrovader.analysis.morphology import aperture_flux, companion_mask, strictly_companion_free
    from astrovader.data.dataset import open_dataset
    from astrovader.latent_paths import deblend
    from astrovader.runs import Run

    net = Run.open(run_dir).network
    ds = open_dataset(dataset)
    cat = ds.catalog
    needed = {"has_companion", "companion_x", "companion_y", "offset_x", "offset_y", "half_light_radius"}
    if missing := needed - set(cat.columns):
        raise InputError(f"{ds.path}: not a simulated dataset with known companions (no {', '.join(sorted(missing))} "
                         "column); make one with astrovader simulate")
    pred = infer(net, ds, progress=progress)
    if companion_components is None:
        companion_components = describe_components(pred, ds, settings=DescribeSettings(n_detailed=0)) \
            .companion_components
    truth = cat["has_companion"].to_numpy(bool)
    members = np.flatnonzero(np.isin(pred.labels, companion_components) & truth)
    members = members[np.argsort(-pred.probs[members].max(1), kind="stable")][:n]
    if len(members) == 0:
        raise InputError(f"no galaxy with a companion in components {companion_components}")
    res = deblend(net, pred, ds, companion_components, galaxies=members, steps=steps,
                  companion_mask=companion_mask, companion_free=strictly_companion_free)
    sub = cat.iloc[members]
    c0 = (ds.image_size - 1) / 2
    cx, cy = c0 + sub["companion_x"].to_numpy(), c0 - sub["companion_y"].to_numpy()
    gx, gy = c0 + sub["offset_x"].to_numpy(), c0 - sub["offset_y"].to_numpy()
    scale = pixel_scale_of(ds) or 1.0
    gal_r = np.clip(np.minimum(2 * sub["half_light_radius"].to_numpy() / scale,
                               np.hypot(cx - gx, cy - gy) - companion_radius), 1.5, None)

    inputs = np.stack([r["galaxy_image"] for r in res])
    strips = np.stack([r["strip"] for r in res])
    comp_in, gal_in = aperture_flux(inputs, cx, cy, companion_radius), aperture_flux(inputs, gx, gy, gal_r)
    out: dict[str, Any] = {"n": len(res), "companion_components": list(companion_components),
                           "twin_has_companion": float(truth[pred.rows[[r["partner"] for r in res]]].mean())}
    if "class_name" in cat.columns:
        names = cat["class_name"].to_numpy()
        out["twin_same_class"] = float((names[pred.rows[members]] ==
                                        names[pred.rows[[r["partner"] for r in res]]]).mean())
    for name, t in (("reconstruction", 0), ("deblended", steps)):
        removed = 1 - aperture_flux(strips[:, t], cx, cy, companion_radius) / comp_in
        change = np.abs(aperture_flux(strips[:, t], gx, gy, gal_r) / gal_in - 1)
        out[name] = {"companion_removed_mean": float(removed.mean()),
                     "companion_removed_median": float(np.median(removed)),
                     "central_change_mean": float(change.mean()), "central_change_median": float(np.median(change))}
    return out
