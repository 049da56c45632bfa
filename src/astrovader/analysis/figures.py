"""Figures for the report, each a function from arrays to a PNG file.

Display conventions (chosen for astronomers reading cut-outs): grey colour map; row 0 of an image array at the
top (``origin="upper"``, the package's orientation convention, so a cut-out is shown as the survey shows it and
spiral arms wind the way they do on the sky); nearest-neighbour pixels; and one linear stretch shared by an input
and its reconstruction within a figure, so a fainter reconstruction *looks* fainter. Residuals (input -
reconstruction) use a diverging map centred on zero with a symmetric range shared across the figure, so over- and
under-prediction read as red and blue. Figures are made without pyplot, so nothing here touches matplotlib's
backend or keeps figures alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from astrovader.data.outputs import temporary_name
from astrovader.errors import InputError

__all__ = ["subplots", "save_figure", "plot_reconstructions", "plot_table", "plot_overlap", "plot_members",
           "plot_secondary", "plot_latent_map", "plot_latent_histograms", "plot_label_counts", "plot_history",
           "cluster_colors", "scale_bar"]

PHASE_COLORS = {"gamma": "#d9d9d9", "anneal": "#fde0c5", "static": "#c6dbef", "scan": "#c7e9c0"}
PHASE_NAMES = {"gamma": "gamma-training", "anneal": "annealing", "static": "static", "scan": "neighbour consistency"}


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], layout: str | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes, made without pyplot: no global figure registry to leak into and no backend to
    choose, so importing or using this module never changes matplotlib's backend (notebooks keep theirs)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


_OUTPUT: dict[str, Any] = {"dpi": 110, "vector": ()}
VECTOR_FORMATS = ("pdf", "svg")


@contextmanager
def figure_output(dpi: int = 110, vector: Sequence[str] = ()) -> Iterator[None]:
    """Within the block, ``save_figure`` writes PNGs at ``dpi`` and a copy of each figure in every format of
    ``vector`` ("pdf", "svg") beside it, for papers."""
    bad = [v for v in vector if v not in VECTOR_FORMATS]
    if bad or dpi < 20:
        raise InputError(f"figure output: dpi must be >= 20 and formats among {', '.join(VECTOR_FORMATS)}; "
                         f"got dpi {dpi}, formats {list(vector)}")
    old = dict(_OUTPUT)
    _OUTPUT.update(dpi=int(dpi), vector=tuple(vector))
    try:
        yield
    finally:
        _OUTPUT.update(old)


def save_figure(fig: Figure, out: str | Path, dpi: int | None = None) -> Path:
    """Write ``fig`` to ``out`` (the format follows the suffix; PNG at the ``figure_output`` dpi unless given)
    and, inside ``figure_output(vector=...)``, a PDF / SVG copy beside it."""
    from matplotlib.text import Text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for text in fig.findobj(Text):  # labels, ids and names are data: "$x$" is drawn as typed, never as TeX
        text.set_parse_math(False)
    for path, kwargs in [(out, {"dpi": dpi or _OUTPUT["dpi"]}),
                         *((out.with_suffix(f".{fmt}"), {}) for fmt in _OUTPUT["vector"])]:
        tmp = temporary_name(path)  # a kill leaves no half-written figure
        fig.savefig(tmp, bbox_inches="tight", facecolor="white", format=path.suffix[1:] or None, **kwargs)
        os.replace(tmp, path)
    return out


def cluster_colors(k: int) -> list:
    """Distinct colours for K components (tab10, then tab20, then a continuous map for larger K)."""
    if k <= 10:
        return [matplotlib.colormaps.get_cmap("tab10")(i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps.get_cmap("tab20")(i) for i in range(k)]
    return [matplotlib.colormaps.get_cmap("turbo")(i / max(k - 1, 1)) for i in range(k)]


# --------------------------------------------------------------------------------------------------
# image helpers
# --------------------------------------------------------------------------------------------------
def display_range(images: np.ndarray, upper: float = 99.7) -> tuple[float, float]:
    """Shared linear range for a set of [0, 1] images: 0 (sky is 0 after the dataset's stretch) to a high
    percentile, so faint galaxies are visible without one bright star setting the scale."""
    if images.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(images, upper))
    return 0.0, hi if hi > 1e-6 else 1.0


def show_image(ax: Axes, img: np.ndarray, vmin: float, vmax: float, cmap: str = "gray", norm=None,
               frame: bool = True) -> None:
    """Draw one (C, H, W) image, row 0 at the top: grey for one channel, RGB for three, the channel mean
    otherwise, with the linear stretch vmin..vmax (or ``norm``), no ticks, and a thin frame unless ``frame`` is
    false (tightly packed grids of galaxies read better without)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(frame)
    if img.shape[0] == 3 and norm is None:
        rgb = np.clip((img - vmin) / max(vmax - vmin, 1e-12), 0, 1).transpose(1, 2, 0)
        ax.imshow(rgb, origin="upper", interpolation="nearest")
        return
    plane = img[0] if img.shape[0] == 1 else img.mean(0)
    if norm is not None:
        ax.imshow(plane, origin="upper", interpolation="nearest", cmap=cmap, norm=norm)
    else:
        ax.imshow(plane, origin="upper", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)


def scale_bar(ax: Axes, pixel_scale: float | None, stamp_px: int, x0: float = 0.0) -> None:
    """An angular scale bar along the bottom of the stamp that starts at column ``x0`` of ``ax``'s image: a round
    number of arcsec near a third of the stamp, labelled. Nothing where the pixel scale is unknown."""
    if not pixel_scale or stamp_px < 8:
        return
    target = stamp_px * pixel_scale / 3
    arcsec = min((v for v in (0.5, 1, 2, 5, 10, 20, 30, 60, 120) if v >= target * 0.6), default=target)
    length = arcsec / pixel_scale
    y = stamp_px - 2.5
    ax.plot([x0 + 1.5, x0 + 1.5 + length], [y, y], color="white", lw=1.6, solid_capstyle="butt")
    ax.text(x0 + 1.5 + length / 2, y - 1.0, f'{arcsec:g}"', color="white", fontsize=6, ha="center", va="bottom")


def plot_reconstructions(inputs: np.ndarray, recons: np.ndarray, out: str | Path, title: str,
                         captions: Sequence[str] | None = None, pixel_scale: float | None = None) -> Path:
    """Input, reconstruction and residual rows for a handful of galaxies (float images in [0, 1]), with an angular
    scale bar on the first input where ``pixel_scale`` (arcsec/px) is known."""
    n = len(inputs)
    vmin, vmax = display_range(inputs)
    res = (inputs - recons).mean(1)
    lim = float(np.percentile(np.abs(res), 99.7)) if res.size else 1.0
    lim = lim if lim > 1e-6 else 1e-3
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    fig, axes = subplots(3, n, figsize=(1.25 * n + 1.2, 4.3), squeeze=False,
                             gridspec_kw={"wspace": 0.04, "hspace": 0.06})
    for i in range(n):
        show_image(axes[0, i], inputs[i], vmin, vmax)
        show_image(axes[1, i], recons[i], vmin, vmax)
        show_image(axes[2, i], res[i][None], 0, 0, cmap="RdBu_r", norm=norm)
        if captions is not None:
            axes[2, i].set_xlabel(captions[i], fontsize=7)
    for r, name in enumerate(("input", "reconstruction", "residual")):
        axes[r, 0].set_ylabel(name, fontsize=9)
    if n:
        scale_bar(axes[0, 0], pixel_scale, inputs.shape[-1])
    im_img = axes[0, -1].images[0] if inputs.shape[1] != 3 else None
    if im_img is not None:
        fig.colorbar(im_img, ax=axes[:2, :].ravel().tolist(), fraction=0.02, pad=0.01,
                     label="stored value / 255\n(dataset's stretch)")
    fig.colorbar(axes[2, -1].images[0], ax=axes[2, :].ravel().tolist(), fraction=0.02, pad=0.01,
                 label="input - recon.")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------------
# tables and matrices
# --------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int | np.integer):
        return f"{v:,}"
    return str(v)


def plot_table(df: pd.DataFrame, out: str | Path, title: str) -> Path:
    """A DataFrame rendered as a PNG table (for slides and papers; the HTML report also has it as HTML)."""
    cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    fig, ax = subplots(figsize=(max(1.05 * len(df.columns), 4), 0.32 * (len(df) + 2) + 0.4))
    ax.axis("off")
    tab = ax.table(cellText=cells, colLabels=[str(c) for c in df.columns], loc="center", cellLoc="right")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.auto_set_column_width(list(range(len(df.columns))))
    tab.scale(1.0, 1.25)
    for (r, _c), cell in tab.get_celld().items():
        if r == 0:
            cell.set_facecolor("#e6e6e6")
            cell.set_text_props(weight="bold")
        elif cells[r - 1][0] == "all":
            cell.set_facecolor("#f3f3f3")
    ax.set_title(title, fontsize=11)
    return save_figure(fig, out)


def plot_overlap(matrix: np.ndarray, out: str | Path, counts: np.ndarray | None = None) -> Path:
    """Figure 5: row c is the mean probability vector of component c's members, with values written in."""
    k = len(matrix)
    fig, ax = subplots(figsize=(0.55 * k + 2.6, 0.5 * k + 1.8))
    im = ax.imshow(np.nan_to_num(matrix, nan=0.0), cmap="viridis", vmin=0, vmax=1, origin="upper")
    for i in range(k):
        for j in range(k):
            v = matrix[i, j]
            txt = "-" if np.isnan(v) else f"{v:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8 if k <= 12 else 6,
                    color="black" if (not np.isnan(v) and v > 0.6) else "white")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ylabels = [f"{i} (n={counts[i]:,})" for i in range(k)] if counts is not None else [str(i) for i in range(k)]
    ax.set_yticklabels(ylabels, fontsize=8)
    ax.set_xlabel("probability of component")
    ax.set_ylabel("members of component\n(most probable)")
    ax.set_title("Mean probabilities of\neach component's members", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean probability")
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------------
# members
# --------------------------------------------------------------------------------------------------
def _mosaic(images: np.ndarray, n_cols: int, vmin: float, vmax: float, gap: int = 2) -> np.ndarray:
    """``n_cols`` images side by side as one array scaled to [0, 1], NaN (drawn white) in gaps and empty
    cells. One imshow per row instead of one axes per galaxy keeps a K = 12 member figure fast to draw."""
    n, c, h, w = images.shape if images.ndim == 4 else (0, 1, 1, 1)
    rgb = c == 3
    out = np.full((h, n_cols * (w + gap) - gap, 3) if rgb else (h, n_cols * (w + gap) - gap), np.nan)
    for j in range(min(n, n_cols)):
        im = np.clip((images[j] - vmin) / max(vmax - vmin, 1e-12), 0, 1)
        out[:, j * (w + gap):j * (w + gap) + w] = im.transpose(1, 2, 0) if rgb else im.mean(0)
    return out


def _show_mosaic(ax: Axes, mosaic: np.ndarray) -> None:
    cmap = matplotlib.colormaps.get_cmap("gray").with_extremes(bad="white")
    if mosaic.ndim == 3:
        mosaic = np.where(np.isnan(mosaic), 1.0, mosaic)
    ax.imshow(np.ma.masked_invalid(mosaic) if mosaic.ndim == 2 else mosaic, cmap=cmap, vmin=0, vmax=1,
              origin="upper", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def plot_members(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], out: str | Path, title: str,
                 n_cols: int, pixel_scale: float | None = None) -> Path:
    """One row per component: ``n_cols`` inputs, then the same galaxies' reconstructions.

    ``rows`` holds (label, inputs, reconstructions, probabilities) per component; a component with fewer
    members than ``n_cols`` leaves blank cells rather than repeating galaxies."""
    present = [r[1] for r in rows if len(r[1])]
    vmin, vmax = display_range(np.concatenate(present) if present else np.zeros(0))
    n_rows = max(len(rows), 1)
    fig, axes = subplots(n_rows, 2, figsize=(1.6 * n_cols + 1.6, 0.95 * n_rows + 0.8), squeeze=False,
                             gridspec_kw={"wspace": 0.04, "hspace": 0.1})
    for r, (label, imgs, recs, probs) in enumerate(rows):
        _show_mosaic(axes[r, 0], _mosaic(imgs, n_cols, vmin, vmax))
        _show_mosaic(axes[r, 1], _mosaic(recs, n_cols, vmin, vmax))
        w = imgs.shape[-1] if imgs.ndim == 4 else 1
        for j in range(min(len(imgs), n_cols)):
            if np.isfinite(probs[j]):
                axes[r, 0].text(j * (w + 2) + 0.5, 0.5, f"{probs[j]:.2f}", fontsize=6, color="yellow",
                                va="top", ha="left")  # top-left corner of each stamp (row 0 is the top)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        if len(imgs):
            scale_bar(axes[r, 0], pixel_scale, w)
        if not len(imgs):
            axes[r, 0].text(0.02, 0.5, "no members", fontsize=8, transform=axes[r, 0].transAxes, va="center")
    axes[0, 0].set_title("inputs (component probability in yellow)", fontsize=9)
    axes[0, 1].set_title("reconstructions", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def plot_secondary(groups: list[tuple[str, np.ndarray]], out: str | Path, title: str, n_cols: int = 8) -> Path:
    """Figure 8: galaxies of non-morphological components grouped by their secondary morphological label."""
    present = [g[1] for g in groups if len(g[1])]
    vmin, vmax = display_range(np.concatenate(present) if present else np.zeros(0))
    n_rows = max(len(groups), 1)
    fig, axes = subplots(n_rows, 1, figsize=(0.85 * n_cols + 1.6, 0.95 * n_rows + 0.7), squeeze=False,
                             gridspec_kw={"hspace": 0.1})
    for r, (label, imgs) in enumerate(groups):
        _show_mosaic(axes[r, 0], _mosaic(imgs, n_cols, vmin, vmax))
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if not groups:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no galaxies in the non-morphological components", ha="center",
                        transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------------
# latent space
# --------------------------------------------------------------------------------------------------
def plot_latent_map(embedding: np.ndarray, labels: np.ndarray, k: int, out: str | Path, title: str) -> Path:
    """The 2-D map of latent means (:func:`astrovader.analysis.latent_map.latent_map`), one colour per most
    probable component."""
    colors = cluster_colors(k)
    fig, ax = subplots(figsize=(6.4, 5.6))
    for c in range(k):
        m = labels == c
        if m.any():
            ax.scatter(embedding[m, 0], embedding[m, 1], s=5, color=colors[c], alpha=0.7, lw=0,
                       label=f"{c} ({m.sum():,})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title, fontsize=11)
    ax.legend(title="component", fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, out)


def plot_latent_histograms(latents: np.ndarray, labels: np.ndarray, k: int, out: str | Path,
                           gmm_means: np.ndarray | None = None) -> Path:
    """Histogram of every latent variable (all objects filled, each component as a line), with the GMM
    component means as ticks: shows which variables separate the clusters and which are unused."""
    j = latents.shape[1]
    n_cols = min(5, j)
    n_rows = int(np.ceil(j / n_cols))
    colors = cluster_colors(k)
    fig, axes = subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.0 * n_rows + 0.6), squeeze=False)
    for d in range(n_rows * n_cols):
        ax = axes.flat[d]
        if d >= j:
            ax.axis("off")
            continue
        x = latents[:, d]
        lo, hi = np.percentile(x, [0.5, 99.5]) if len(x) else (0, 1)
        if hi <= lo:
            lo, hi = lo - 1, hi + 1
        bins = np.linspace(lo, hi, 40)
        ax.hist(x, bins=bins, color="#bbbbbb", label="all")
        for c in range(k):
            m = labels == c
            if m.sum() > 1:
                ax.hist(x[m], bins=bins, histtype="step", color=colors[c], lw=1)
        if gmm_means is not None:
            for c in range(k):
                ax.axvline(gmm_means[c, d], ymax=0.08, color=colors[c], lw=1.5)
        ax.set_title(f"z_{d}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    handles = [Patch(color="#bbbbbb", label="all")] + [Patch(color=colors[c], label=str(c)) for c in range(k)]
    fig.legend(handles=handles, title="component", fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Latent means (ticks: GMM component means)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out)


# --------------------------------------------------------------------------------------------------
# comparisons and training
# --------------------------------------------------------------------------------------------------
def plot_label_counts(counts: pd.DataFrame, out: str | Path, title: str, normalise: bool = False) -> Path:
    """Grouped bars: rows of ``counts`` are components, columns classes (Figures 13-14 style)."""
    k, m = counts.shape
    data = counts.to_numpy(dtype=float)
    if normalise:
        tot = data.sum(1, keepdims=True)
        data = np.divide(data, tot, out=np.zeros_like(data), where=tot > 0)
    fig, ax = subplots(figsize=(max(5.0, 0.5 * k * max(m, 2) * 0.45 + 2.5), 3.8))
    width = 0.8 / max(m, 1)
    x = np.arange(k)
    # classes in greys with hatches: colours are the components' everywhere else in the report
    colors = matplotlib.colormaps.get_cmap("Greys")(np.linspace(0.15, 0.8, max(m, 1)))
    hatches = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
    for i, col in enumerate(counts.columns):
        ax.bar(x - 0.4 + width * (i + 0.5), data[:, i], width, color=colors[i], edgecolor="black", lw=0.4,
               hatch=hatches[i % len(hatches)], label=str(col))
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in counts.index])
    ax.set_xlabel("component (most probable)")
    ax.set_ylabel("fraction of component" if normalise else "galaxies")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, out)


def plot_history(history: list[dict], out: str | Path) -> Path:
    """The paper's Figure 2: total, reconstruction, unit-Gaussian KL and GMM KL per epoch, training (solid)
    and validation (dashed), with the gamma-training / annealing / static phases shaded. A panel uses a log
    axis when all its values are positive and span more than a factor of 20."""
    df = pd.DataFrame(history)
    epochs = df["epoch"].to_numpy(dtype=float) + 1 if len(df) else np.zeros(0)
    terms = [("total", "total loss"), ("recon", "reconstruction"), ("kl_unit", "unit-Gaussian KL"),
             ("kl_gmm", "GMM KL")]
    fig, axes = subplots(2, 2, figsize=(10, 6.4), sharex=True)
    for ax, (key, name) in zip(axes.flat, terms, strict=True):
        seen_phases = set()
        if "phase" in df:
            start = 0
            phases = df["phase"].astype(str).tolist()
            for i in range(1, len(phases) + 1):
                if i == len(phases) or phases[i] != phases[start]:
                    ph = phases[start]
                    ax.axvspan(epochs[start] - 0.5, epochs[i - 1] + 0.5, color=PHASE_COLORS.get(ph, "#eeeeee"),
                               lw=0, label=PHASE_NAMES.get(ph, ph) if ph not in seen_phases else None)
                    seen_phases.add(ph)
                    start = i
        vals = []
        for split, ls in (("train", "-"), ("val", "--")):
            col = f"{split}_{key}"
            if col in df:
                y = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
                if key == "kl_gmm" and "phase" in df:  # not part of the loss in gamma-training: logged as 0
                    y = np.where(df["phase"].astype(str).to_numpy() == "gamma", np.nan, y)
                if np.isfinite(y).any():
                    ax.plot(epochs, y, ls, color="black" if split == "train" else "tab:red", lw=1.3,
                            label="training" if split == "train" else "validation")
                    vals.append(y[np.isfinite(y)])
        v = np.concatenate(vals) if vals else np.zeros(0)
        if len(v) and (v > 0).all() and v.max() / v.min() > 20:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("loss per image")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, out)
