"""One orientation convention end to end: row 0 of every stored array is the top of the image.

A PNG with a marker in its top-left corner and a FITS file holding the same picture (FITS row 0 is the bottom,
as ds9 shows it) ingest with the marker in the same place; every figure, the PNG grid and the GIF frames draw it
top-left; the FITS cube written by ``generate`` holds it bottom-up, as FITS viewers expect; ``simulate`` stores
its galaxies the same way up as its catalogue describes them. A mirrored galaxy reverses its spiral, so this
matters for science, not only for looks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from scipy import ndimage

from astrovader.analysis import explore_figures, figures
from astrovader.data.dataset import Dataset
from astrovader.data.grids import save_png_grid
from astrovader.data.ingest import ingest_folder

SIZE = 64


def _marked() -> np.ndarray:
    """A dark 64 px picture with a bright square in its top-left corner (as the eye sees it)."""
    img = np.full((SIZE, SIZE), 20, np.uint8)
    img[4:20, 4:20] = 240
    return img


def _top_left_is_bright(picture: np.ndarray) -> bool:
    """Whether the top-left quarter of a displayed picture is much brighter than the other three."""
    grey = picture.astype(float).mean(-1) if picture.ndim == 3 else picture.astype(float)
    h, w = grey.shape
    quarters = [grey[:h // 2, :w // 2], grey[:h // 2, w // 2:], grey[h // 2:, :w // 2], grey[h // 2:, w // 2:]]
    means = [q.mean() for q in quarters]
    return means[0] > 2 * max(means[1:])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("orient")
    out = {}
    for kind in ("png", "jpg", "fits"):
        src = tmp / f"src-{kind}"
        src.mkdir()
        if kind == "fits":  # the same picture, stored the FITS way: first row at the bottom
            fits.PrimaryHDU(_marked()[::-1].astype(np.float32)).writeto(src / "1.fits")
        else:
            Image.fromarray(_marked()).save(src / f"1.{kind}", quality=95)
        ingest_folder(src, tmp / f"ds-{kind}", crop=1.0, size=SIZE, workers=1, progress=False)
        out[kind] = Dataset(tmp / f"ds-{kind}").load()[0, 0]
    return out


def test_png_jpeg_and_fits_ingest_with_the_marker_top_left(ingested):
    for kind, arr in ingested.items():
        assert arr[4:20, 4:20].mean() > 3 * arr[40:60, 40:60].mean(), kind  # top-left rows 4..19, cols 4..19
        assert _top_left_is_bright(arr), kind


def _drawn(draw, tmp_path: Path) -> np.ndarray:
    """What one image looks like when a module's imshow helper draws it on axes filling a whole figure."""
    fig, _ = figures.subplots(figsize=(2, 2))
    ax = fig.axes[0]
    ax.set_position([0, 0, 1, 1])
    draw(ax)
    path = tmp_path / "panel.png"
    fig.savefig(path, dpi=64)
    return np.asarray(Image.open(path).convert("L"))


def test_every_figure_helper_draws_row_zero_at_the_top(ingested, tmp_path):
    img = ingested["png"][None].astype(np.float32) / 255  # (C, H, W)
    drawers = {
        "every image panel": lambda ax: figures.show_image(ax, img, 0.0, 1.0),
        "report member mosaics": lambda ax: figures._show_mosaic(ax, figures._mosaic(img[None], 1, 0.0, 1.0)),
    }
    for name, draw in drawers.items():
        assert _top_left_is_bright(_drawn(draw, tmp_path)), name


def test_png_grid_and_gif_frames_keep_the_marker_top_left(ingested, tmp_path):
    imgs = np.stack([ingested["png"][None]] * 4)
    grid = np.asarray(Image.open(save_png_grid(imgs, tmp_path / "grid.png", ncols=2)))
    assert _top_left_is_bright(grid[:SIZE, :SIZE])
    frames = explore_figures._to_uint8_display(imgs.astype(np.float32) / 255, 1.0)
    assert _top_left_is_bright(frames[0])


def test_a_report_figure_shows_the_marker_top_left(ingested, tmp_path):
    x = ingested["png"][None, None].astype(np.float32) / 255
    out = figures.plot_reconstructions(x, x, tmp_path / "rec.png", "orientation")
    page = np.asarray(Image.open(out).convert("L")).astype(float)
    # the input panel is the top-most large dark region of the figure (the sky of the picture)
    labels, n = ndimage.label(page < 60)
    boxes = [b for b in ndimage.find_objects(labels) if (b[0].stop - b[0].start) > 20 and (b[1].stop - b[1].start) > 20]
    panel = page[min(boxes, key=lambda b: b[0].start)]
    assert _top_left_is_bright(panel)


def test_generated_fits_cube_is_bottom_up(tmp_path):
    from astrovader import AstroVaDEr, Config
    from astrovader.sampling import generate_to_dataset, generate_to_fits

    cfg = Config.resolve("demo", overrides=["model.image_size=16", "model.encoder_filters=[4,4]",
                                            "model.encoder_kernels=[3,3]", "model.decoder_filters=[4,4]",
                                            "model.decoder_kernels=[3,3]", "model.latent_dim=4", "train.device=cpu"])
    net = AstroVaDEr(cfg).net
    cube_path = generate_to_fits(net, tmp_path / "g.fits", 5, seed=1, progress=False)
    stored = Dataset(generate_to_dataset(net, tmp_path / "g", 5, seed=1, progress=False)).load()[:, 0]
    with fits.open(cube_path) as hdul:
        cube = hdul[0].data
    # FITS row 0 (the first NAXIS2 row) is the bottom of the image, our row 0 its top
    np.testing.assert_allclose(cube[:, 0, :], stored[:, -1, :] / 255.0, atol=1e-6)
    np.testing.assert_allclose(cube[:, ::-1], stored / 255.0, atol=1e-6)


def test_simulated_companions_lie_where_the_catalogue_says(tmp_path):
    from astrovader.data.simulate import simulate

    ds = simulate(tmp_path / "sim", 24, size=32, seed=3, companion_fraction=1.0, workers=1, progress=False)
    cat = ds.catalog
    imgs = ds.load()[:, 0].astype(float)
    agree = 0
    for img, (cy, cx) in zip(imgs, cat[["companion_y", "companion_x"]].to_numpy(), strict=True):
        # catalogue y is up (towards row 0): the companion's row is centre - y, its column centre + x
        r, c = int(round(15.5 - cy)), int(round(15.5 + cx))
        mirrored = int(round(15.5 + cy))
        near = img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].mean()
        far = img[max(mirrored - 1, 0):mirrored + 2, max(c - 1, 0):c + 2].mean()
        agree += near > far
    assert agree >= 20, agree  # faint companions can drown in the noise; the orientation must not be flipped
