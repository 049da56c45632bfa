"""Figures of synthetic galaxies and latent-space exploration (paper Figures 9-12): the gallery, the route
interpolation (PNG, animated GIF and frame strip), the latent traversal and deblending, and
:func:`generation_figures`, which makes all four for a run.

Images are drawn with row 0 at the top, as stored (the package's orientation convention), with one linear
stretch shared by a whole figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis.describe import DescribeSettings, describe_components
from astrovader.analysis.figures import display_range, save_figure, show_image, subplots
from astrovader.analysis.morphology import companion_mask, strictly_companion_free
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.inference import Predictions
from astrovader.latent_paths import deblend, latent_summary, route_interpolation, traverse
from astrovader.model import AstroVaDErNet
from astrovader.sampling import gallery


# --------------------------------------------------------------------------------------------------
# display helpers
# --------------------------------------------------------------------------------------------------
def _vmax(images: np.ndarray) -> float:
    """The upper end of the one linear stretch a whole figure shares (its lower end is the sky, 0)."""
    return display_range(images)[1]


def _grid(nrows: int, ncols: int, cell: float = 0.85, hspace: float = 0.02):
    """A grid of image axes with a 'compressed' layout, which packs equal-aspect panels without the large
    margins that fixed subplot spacing leaves when the figure's shape does not match the grid's."""
    fig, axes = subplots(nrows, ncols, figsize=(cell * ncols + 1.2, cell * nrows + 0.6), squeeze=False,
                         layout="compressed")
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=hspace)
    return fig, axes


def _to_uint8_display(images: np.ndarray, vmax: float, upscale: int = 1) -> np.ndarray:
    """(N, C, H, W) float images -> (N, H*u, W*u[, 3]) uint8 with the figure's stretch, for GIF/PNG frames."""
    x = np.clip(images / vmax, 0, 1)
    x = x.transpose(0, 2, 3, 1) if x.shape[1] == 3 else x.mean(1)
    x = np.rint(x * 255).astype(np.uint8)
    if upscale > 1:
        x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return x


# --------------------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------------------
def plot_gallery(images: np.ndarray, components: Sequence[int], out: str | Path, weights: np.ndarray | None = None,
                 title: str = "Synthetic galaxies per component") -> Path:
    """One row per component, labelled with its number and mixture weight."""
    k, n = images.shape[:2]
    vmax = _vmax(images)
    fig, axes = _grid(k, n)
    for r, c in enumerate(components):
        for i in range(n):
            show_image(axes[r, i], images[r, i], 0.0, vmax, frame=False)
        label = f"comp. {c}" + (f"\nπ={weights[c]:.2f}" if weights is not None else "")
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def plot_interpolation(route: dict[str, Any], out: str | Path,
                       title: str = "Interpolation along the shortest route") -> Path:
    """One row per leg of the route; the first and last columns are the decoded anchor objects."""
    legs = route["legs"]
    ncols = legs[0][2].shape[0]
    vmax = _vmax(np.concatenate([leg[2] for leg in legs]))
    fig, axes = _grid(len(legs), ncols)
    for r, (a, b, imgs) in enumerate(legs):
        for i in range(ncols):
            show_image(axes[r, i], imgs[i], 0.0, vmax, frame=False)
        axes[r, 0].set_ylabel(f"{a} → {b}", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"{title} (components {' → '.join(map(str, route['components']))})", fontsize=9)
    return save_figure(fig, out)


def save_route_animation(route: dict[str, Any], gif: str | Path, strip: str | Path, upscale: int | None = None,
                         frame_ms: int = 120) -> tuple[Path, Path]:
    """An animated GIF (looping) and a one-row frame strip PNG of the route, with the figures' stretch.
    Each leg's last frame is the next leg's first, so it is dropped to avoid a stutter."""
    from PIL import Image

    legs = route["legs"]
    frames = np.concatenate([leg[2][:-1] for leg in legs] + [legs[-1][2][-1:]])
    vmax = _vmax(frames)
    h = frames.shape[-1]
    upscale = upscale or max(1, 128 // h)
    # A closed tour ends where it began: the looping GIF drops that repeated frame, the strip shows it.
    gif_frames = frames[:-1] if route.get("closed") else frames
    disp = _to_uint8_display(gif_frames, vmax, upscale)
    pil = [Image.fromarray(f) for f in disp]
    gif, strip = Path(gif), Path(strip)
    gif.parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=frame_ms, loop=0)
    small = _to_uint8_display(frames, vmax, max(1, 64 // h))
    gap = np.full((small.shape[1], 2, *small.shape[3:]), 255, np.uint8)
    row = np.concatenate([x for f in small for x in (f, gap)][:-1], axis=1)
    Image.fromarray(row).save(strip)
    return gif, strip


def plot_traversal(images: np.ndarray, out: str | Path, latents: np.ndarray | None = None,
                   title: str = "Latent traversal (others at their mean)") -> Path:
    """J rows x M columns; each row labelled with its variable and range."""
    J, M = images.shape[:2]
    vmax = _vmax(images)
    fig, axes = _grid(J, M, cell=0.8)
    for j in range(J):
        for i in range(M):
            show_image(axes[j, i], images[j, i], 0.0, vmax, frame=False)
        label = f"z{j}"
        if latents is not None:
            label += f"\n[{latents[:, j].min():.1f}, {latents[:, j].max():.1f}]"
        axes[j, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel("min", fontsize=8)
    axes[-1, M // 2].set_xlabel("mean" if M % 2 else "", fontsize=8)
    axes[-1, -1].set_xlabel("max", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def plot_deblend(results: list[dict[str, Any]], out: str | Path,
                 title: str = "Deblending by interpolation") -> Path:
    """Per example: the input galaxy, the decoded line (ends are reconstructions) and the counterpart's input."""
    ncols = results[0]["strip"].shape[0] + 2
    allimgs = np.concatenate([np.concatenate([r["strip"], r["galaxy_image"][None], r["partner_image"][None]])
                              for r in results])
    vmax = _vmax(allimgs)
    fig, axes = _grid(len(results), ncols, cell=0.9, hspace=0.08)
    for r, res in enumerate(results):
        panels = [res["galaxy_image"], *res["strip"], res["partner_image"]]
        for i, img in enumerate(panels):
            show_image(axes[r, i], img, 0.0, vmax, frame=False)
        axes[r, 0].set_title(f"input\nid {res['galaxy_id']}", fontsize=7)
        axes[r, 1].set_title(f"recon.\ncomp. {res['component']}", fontsize=7)
        axes[r, -2].set_title(f"recon.\ncomp. {res['partner_component']}", fontsize=7)
        axes[r, -1].set_title(f"input\nid {res['partner_id']}", fontsize=7)
        for ax in (axes[r, 0], axes[r, -1]):
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_color("tab:orange")
                s.set_linewidth(1.5)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def generation_figures(net: AstroVaDErNet, dataset: str | Path | Dataset, out_dir: str | Path, *,
                       predictions: str | Path | pd.DataFrame | Predictions | None = None,
                       n_per_component: int = 8,
                       steps: int = 8, traverse_steps: int = 9, companion_components: Sequence[int] | None = None,
                       closed: bool = True, temperature: float = 1.0, seed: int = 0,
                       progress: bool = False, rows: np.ndarray | None = None,
                       log: Callable[[str], None] | None = None) -> list[tuple[str, Path]]:
    """Write the gallery, route interpolation (+ GIF and frame strip), traversal and deblending figures for
    a run to ``out_dir``; returns (title, PNG path) for the four figures, for reports. Dataset latents are
    computed once (or read from ``predictions``) and shared by the three exploration figures. The deblending
    figure starts from ``companion_components`` (default: those ``describe`` flags, from a quick measurement
    without statmorph) and is left out when there are none. ``log`` is told each step as it starts."""
    log = log or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(dataset)
    summary = latent_summary(net, ds, predictions, progress=progress)
    weights = net.gmm.weights.detach().double().cpu().numpy()
    figs: list[tuple[str, Path]] = []
    log("synthetic galaxies per component")
    imgs, comps = gallery(net, n_per_component, temperature=temperature, seed=seed)
    t = f"Synthetic galaxies per component (z ~ N(μ_c, T σ²_c), T = {temperature:g})"
    figs.append((t, plot_gallery(imgs, comps, out_dir / "gallery.png", weights, title=t)))
    log("shortest-route interpolation (figure, GIF, frame strip)")
    route = route_interpolation(net, summary, steps=steps, closed=closed)
    t = "Interpolation along the shortest route through each component's most probable object"
    figs.append((t, plot_interpolation(route, out_dir / "interpolation.png", title="Shortest-route interpolation")))
    save_route_animation(route, out_dir / "interpolation.gif", out_dir / "interpolation_strip.png")
    log("latent traversal")
    trav = traverse(net, summary.mu, traverse_steps)
    t = "Latent traversal: each variable from its minimum to its maximum, others at their mean"
    figs.append((t, plot_traversal(trav, out_dir / "traversal.png", summary.mu)))
    if companion_components is None and summary.probs.shape[1] >= 2:
        log("which components are grouped by companions (describe, photutils only)")
        quick = DescribeSettings(max_members=200, n_detailed=0, seed=seed)
        companion_components = describe_components(summary, ds, settings=quick,
                                                   progress=progress).companion_components
    companion_components = [c for c in (companion_components or []) if (summary.labels == c).any()]
    if rows is not None:  # the rows an analysis reports on: its galaxies and their twins come from them
        companion_components = [c for c in companion_components
                                if ((summary.labels == c) & np.isin(summary.rows, rows)).any()]
    if companion_components:
        log(f"deblending from component(s) {', '.join(map(str, companion_components))}")
        res = deblend(net, summary, ds, companion_components, steps=steps, n_examples=3,
                      companion_mask=companion_mask, companion_free=strictly_companion_free, rows=rows)
        if res:
            t = (f"Deblending by interpolation: the most probable members of component {res[0]['component']} "
                 "(grouped by companions), each moved along the latent line to its companion-free twin (the "
                 "galaxy most like it outside the companion's pixels)")
            figs.append((t, plot_deblend(res, out_dir / "deblending.png", title="Deblending by interpolation")))
    return figs
