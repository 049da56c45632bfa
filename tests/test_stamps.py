"""Galaxy-frame stamps: measured centre, size and orientation; scale- and angle-free stamps; bad frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from astrovader.data.dataset import Dataset
from astrovader.data.decode import ImageReadError
from astrovader.data.ingest import ingest_folder
from astrovader.data.stamps import NoGalaxyError, galaxy_stamp, measure_galaxy, parse_crop, preprocess


def _galaxy(n: int = 121, x0: float = 60.3, y0: float = 58.7, sigma: float = 8.0, q: float = 0.5,
            angle_deg: float = 30.0, peak: float = 180.0, background: float = 10.0, noise: float = 1.0,
            seed: int = 0) -> np.ndarray:
    """An elliptical Gaussian galaxy (major-axis sigma, axis ratio q, position angle from +x towards +y)."""
    yy, xx = np.indices((n, n), dtype=np.float64)
    t = np.radians(angle_deg)
    u = (xx - x0) * np.cos(t) + (yy - y0) * np.sin(t)
    v = -(xx - x0) * np.sin(t) + (yy - y0) * np.cos(t)
    img = background + peak * np.exp(-0.5 * ((u / sigma) ** 2 + (v / (q * sigma)) ** 2))
    return img + np.random.default_rng(seed).normal(0, noise, img.shape)


def _moments(stamp: np.ndarray) -> tuple[float, float, float, float]:
    f = np.clip(stamp - np.median(stamp[:4]), 0, None)
    yy, xx = np.indices(f.shape)
    x0, y0 = (f * xx).sum() / f.sum(), (f * yy).sum() / f.sum()
    return x0, y0, (f * (xx - x0) ** 2).sum() / f.sum(), (f * (yy - y0) ** 2).sum() / f.sum()


def test_measure_recovers_centre_shape_and_angle():
    s = measure_galaxy(_galaxy())
    assert s.x == pytest.approx(60.3, abs=0.2) and s.y == pytest.approx(58.7, abs=0.2)
    assert s.axis_ratio == pytest.approx(0.5, abs=0.04)
    assert np.degrees(s.angle) % 180 == pytest.approx(30.0, abs=2.0)
    assert s.background == pytest.approx(10.0, abs=0.5)
    # R90 in circular apertures of the noise-free model, by brute force
    model = _galaxy(noise=0.0) - 10.0
    yy, xx = np.indices(model.shape)
    r = np.hypot(xx - 60.3, yy - 58.7).ravel()
    order = np.argsort(r)
    r90 = r[order][np.searchsorted(np.cumsum(model.ravel()[order]) / model.sum(), 0.9)]
    assert s.r90 == pytest.approx(r90, rel=0.1)
    assert s.r50 < s.r90


def test_a_companion_away_from_the_centre_does_not_move_the_measurement():
    img = _galaxy(angle_deg=0.0)
    alone = measure_galaxy(img)
    yy, xx = np.indices(img.shape)
    img = img + 180.0 * np.exp(-0.5 * ((xx - 100) ** 2 + (yy - 100) ** 2) / 3.0 ** 2)
    paired = measure_galaxy(img)
    assert paired.x == pytest.approx(alone.x, abs=0.2) and paired.r90 == pytest.approx(alone.r90, rel=0.05)


@pytest.mark.parametrize("angle", [-70.0, 0.0, 30.0, 95.0])
def test_derotated_stamp_is_centred_with_the_major_axis_horizontal(angle: float):
    img = _galaxy(angle_deg=angle, noise=0.0)  # noise would add the same variance along both axes
    s = measure_galaxy(img)
    stamp = galaxy_stamp([img], s, side=4 * s.r90, size=48, derotate=True)[0]
    x0, y0, vx, vy = _moments(stamp)
    assert x0 == pytest.approx(23.5, abs=0.4) and y0 == pytest.approx(23.5, abs=0.4)
    assert vx / vy == pytest.approx(1 / 0.5 ** 2, rel=0.2)
    # outside the frame is filled with the background, not zero
    corner = galaxy_stamp([img], s, side=6 * img.shape[0], size=48, derotate=True)[0]
    assert corner[0, 0] == pytest.approx(10.0, abs=1.0)


def test_r90_frame_makes_stamps_independent_of_apparent_size_and_angle():
    crop = parse_crop("3xR90", derotate=True)
    small = preprocess(_galaxy(n=161, x0=80.2, y0=79.6, sigma=5.0, angle_deg=10.0), crop, 32, colour=False)[0]
    large = preprocess(_galaxy(n=161, x0=80.2, y0=79.6, sigma=12.0, angle_deg=75.0), crop, 32, colour=False)[0]
    centred = preprocess(_galaxy(n=161, x0=80.2, y0=79.6, sigma=12.0, angle_deg=75.0), parse_crop("0.5"), 32,
                         colour=False)[0]
    same = np.abs(small.astype(float) - large).mean()
    assert same < 4.0  # grey levels out of 255
    assert np.abs(centred.astype(float) - large).mean() > 4 * same


def test_colour_frame_keeps_bands_and_derotated_centre_crop_keeps_its_side():
    g = _galaxy()
    rgb = np.stack([g, 0.5 * g, 0.25 * g], axis=-1)
    out = preprocess(rgb, parse_crop("3xR90"), 24, colour=True)
    assert out.shape == (3, 24, 24) and out[0].mean() > out[1].mean() > out[2].mean()
    turned = preprocess(g, parse_crop("0.5", derotate=True), 30, colour=False)[0]
    _, _, vx, vy = _moments(turned.astype(float))
    assert vx > 2.5 * vy


def test_parse_galaxy_frame_specs():
    assert parse_crop("3xR90").r90 == 3.0 and parse_crop("2.5 x r90").r90 == 2.5 and parse_crop("4R90").r90 == 4
    assert parse_crop("3xR90", derotate=True).describe() == "3xR90+derotate"
    assert parse_crop("0.4", derotate=True).describe() == "0.4+derotate"
    assert parse_crop("0.4").describe() == "0.4"
    for bad in ("0.1xR90", "xR90", "3xR50"):
        with pytest.raises(ValueError, match="--crop"):
            parse_crop(bad)


def test_blank_frame_is_reported_and_skipped_by_ingest(tmp_path: Path):
    with pytest.raises(NoGalaxyError):
        measure_galaxy(np.full((40, 40), 7.0))
    with pytest.raises(ImageReadError, match="galaxy frame 3xR90"):
        preprocess(np.full((40, 40), 7, np.uint8), parse_crop("3xR90"), 16, colour=False)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        img = np.clip(_galaxy(n=81, x0=40, y0=40, sigma=4 + i, seed=i), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(src / f"gal{i}.png")
    Image.fromarray(np.full((81, 81), 5, np.uint8)).save(src / "blank.png")
    report = ingest_folder(src, tmp_path / "out", crop="3xR90", derotate=True, size=16, workers=1, progress=False)
    assert report.n_written == 3 and report.n_failed == 1 and report.balanced
    assert "blank.png" in report.failures[0].file and "no source" in report.failures[0].reason
    ds = Dataset(tmp_path / "out")
    assert len(ds) == 3 and ds.meta["preprocessing"]["crop"] == "3xR90+derotate"
    assert "affine" in ds.meta["preprocessing"]["resize"]


def test_flux_norm_makes_bright_and_faint_copies_of_a_galaxy_alike():
    """--flux-norm: every stamp's mean is the flux level, so one shape at two surface brightnesses gives one
    stamp; colour ratios are kept; a blank stamp is an error, not a division by zero."""
    spec = parse_crop("3xR90", derotate=True, flux_level=20)
    assert spec.describe() == "3xR90+derotate+flux20"
    bright = np.clip(_galaxy(peak=200.0, background=4.0, noise=0.5), 0, 255)
    faint = bright / 4  # the same galaxy (and sky) at a quarter of the surface brightness
    raw = [preprocess(g, parse_crop("3xR90", derotate=True), 48, False)[0].astype(float) for g in (bright, faint)]
    out = [preprocess(g, spec, 48, False)[0].astype(float) for g in (bright, faint)]
    assert [o.mean() for o in out] == [pytest.approx(20, abs=0.3)] * 2
    assert np.abs(raw[0] - raw[1]).mean() > 10 * np.abs(out[0] - out[1]).mean()  # brightness gone, shape kept
    colour = np.stack([bright * 0.5, bright, bright * 0.25], axis=2)
    r, g, b = preprocess(colour, spec, 48, True).astype(float).reshape(3, -1).mean(1)
    assert (r + g + b) / 3 == pytest.approx(20, abs=0.3) and r / g == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ImageReadError, match="blank stamp"):
        preprocess(np.zeros((64, 64)), parse_crop("0.5", flux_level=20), 32, False)
    for bad in (0, 255, -3):
        with pytest.raises(ValueError, match="flux level"):
            parse_crop("0.5", flux_level=bad)
