"""Generation and latent-space exploration (paper section 5.3, Figures 9-12).

Synthetic galaxies are made as in the paper: choose a component c (fixed, cycled through a list, or drawn
from the mixture weights or uniformly), draw z ~ N(mu_c, T * var_c) and decode. The authors' script used
half the fitted variance; ``temperature`` (default 1, the fitted prior) exposes that choice.

Reproducibility and resumption rest on one rule: the random numbers of image ``i`` come only from
``(seed, i // RNG_BLOCK)``. The images therefore do not depend on the batch size, on where an interrupted
run stopped, or on how many images were asked for, so re-running a killed ``generate`` continues from the
committed count and yields exactly the bytes an uninterrupted run would have written.

Exploration (interpolation along the shortest route through the most probable member of every component,
traversal of each latent variable, a crude deblending demo) works from a :class:`LatentSummary` of a real
dataset: latent means, posterior probabilities and reconstruction errors, from the model or from an
``astrovader predict`` catalogue.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from astrovader.data.dataset import Dataset, DatasetError, DatasetWriter, is_dataset, open_dataset
from astrovader.predict import infer_batch

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from astrovader.estimator import AstroVaDEr

RNG_BLOCK = 256  # images per independent random stream; fixed so output never depends on batch size
HELD_KARP_MAX = 12  # exact shortest route up to this many points (2^12 * 12^2 operations, milliseconds)
WEIGHTS = ("mixture", "uniform")

__all__ = [
    "RNG_BLOCK", "GenerationSpec", "sample_latents", "decode_uint8", "iter_generated", "generate_to_dataset",
    "FastDecoder", "generate_to_png", "generate_to_fits", "consistency_from_assignments", "cluster_consistency",
    "format_consistency", "gallery", "plot_gallery", "shortest_route", "route_length", "held_karp",
    "interpolate", "route_interpolation", "plot_interpolation", "traverse", "plot_traversal",
    "LatentSummary", "latent_summary", "deblend", "plot_deblend", "generation_figures",
]


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides which images a generation run makes (besides the model weights).

    Stored in the output dataset's ``dataset.json`` so a re-run can tell whether it is continuing the same
    run (resume) or would silently mix two different ones (refused)."""

    clusters: tuple[int, ...] | None = None
    weights: str = "mixture"
    temperature: float = 1.0
    seed: int = 0

    def validate(self, n_clusters: int) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.clusters is not None:
            if len(self.clusters) == 0:
                raise ValueError("clusters must name at least one component")
            bad = [c for c in self.clusters if not 0 <= c < n_clusters]
            if bad:
                raise ValueError(f"cluster must be in 0..{n_clusters - 1}, got {bad}")

    def as_dict(self) -> dict[str, Any]:
        return {"clusters": None if self.clusters is None else list(self.clusters), "weights": self.weights,
                "temperature": float(self.temperature), "seed": int(self.seed)}


def _spec(clusters: int | Sequence[int] | None, weights: str, temperature: float, seed: int) -> GenerationSpec:
    cl = None if clusters is None else tuple(int(c) for c in np.atleast_1d(np.asarray(clusters)))
    return GenerationSpec(cl, weights, float(temperature), int(seed))


def _gmm_arrays(model: AstroVaDEr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixture weights, means and variances (K, J) -- or Cholesky factors (K, J, J) for a full-covariance
    prior -- as float64 NumPy arrays (sampled on the host so that the latent vectors are identical on every
    device and platform)."""
    g = model.net.gmm
    with torch.no_grad():
        spread = g.variances if g.covariance == "diag" else g.scale_tril
        return (g.weights.detach().double().cpu().numpy(), g.means.detach().double().cpu().numpy(),
                spread.detach().double().cpu().numpy())


def sample_latents(gmm: tuple[np.ndarray, np.ndarray, np.ndarray], start: int, stop: int,
                   spec: GenerationSpec) -> tuple[np.ndarray, np.ndarray]:
    """Components and latent vectors of images ``start:stop`` of the stream defined by ``spec``.

    Block b = i // RNG_BLOCK draws RNG_BLOCK uniforms (component choice) and RNG_BLOCK x J normals from
    ``default_rng([seed, b])``; a slice of the stream is the same whichever calls produce it."""
    weights, means, variances = gmm
    K, J = means.shape
    if stop <= start:
        return np.zeros(0, np.int16), np.zeros((0, J), np.float32)
    b0, b1 = start // RNG_BLOCK, (stop - 1) // RNG_BLOCK
    u = np.empty((b1 - b0 + 1) * RNG_BLOCK)
    eps = np.empty((b1 - b0 + 1) * RNG_BLOCK * J).reshape(-1, J)
    for k, b in enumerate(range(b0, b1 + 1)):
        rng = np.random.default_rng([spec.seed, b])
        u[k * RNG_BLOCK:(k + 1) * RNG_BLOCK] = rng.random(RNG_BLOCK)
        eps[k * RNG_BLOCK:(k + 1) * RNG_BLOCK] = rng.standard_normal((RNG_BLOCK, J))
    lo = start - b0 * RNG_BLOCK
    u, eps = u[lo:lo + stop - start], eps[lo:lo + stop - start]
    if spec.clusters is not None:  # cycled by global index: balanced counts, independent of batching
        comps = np.asarray(spec.clusters, np.int64)[np.arange(start, stop) % len(spec.clusters)]
    elif spec.weights == "uniform":
        comps = np.minimum((u * K).astype(np.int64), K - 1)
    else:
        cdf = np.cumsum(weights)
        comps = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), K - 1)
    if variances.ndim == 2:
        z = means[comps] + np.sqrt(spec.temperature * variances[comps]) * eps
    else:  # full covariance: z = mu_c + sqrt(T) L_c eps
        z = means[comps] + np.sqrt(spec.temperature) * np.einsum("nij,nj->ni", variances[comps], eps)
    return comps.astype(np.int16), z.astype(np.float32)


def _use_autocast(device: torch.device) -> bool:
    # bf16 on GPUs only: on CPUs the decoded bytes should match `AstroVaDEr.decode` as closely as possible.
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


class FastDecoder:
    """An inference copy of the model's decoder in channels-last memory format.

    Convolutions and bilinear up-sampling on channels-last tensors are 2-4x faster on CPUs (oneDNN) and use
    tensor cores on GPUs; the copy leaves the model itself untouched for training and other callers."""

    def __init__(self, model: AstroVaDEr):
        import copy

        self.device = model.device
        self.decoder = copy.deepcopy(model.net.decoder).eval().to(memory_format=torch.channels_last)
        self.sigmoid = bool(self.decoder.bce)
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        self.chunk = self.cpu_chunk(model) if self.device.type == "cpu" else None

    @staticmethod
    def cpu_chunk(model: AstroVaDEr, cache_bytes: int = 4 << 20) -> int:
        """Images per forward pass on a CPU: as many as keep the largest decoder activation within a few MB.
        Past that the activations fall out of cache and a batch of 1024 runs slower than one of 64."""
        m = model.config.model
        side = m.image_size // 2 ** len(m.decoder_filters)
        per_image = max(f * (side * 2 ** (i + 1)) ** 2 * 4 for i, f in enumerate(m.decoder_filters))
        return int(2 ** np.clip(np.floor(np.log2(max(cache_bytes // per_image, 1))), 3, 10))

    @torch.inference_mode()
    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Decode latent vectors to uint8 images (the dataset format's pixels), rounding x * 255 as ingest
        does. On CPUs the batch is decoded in cache-sized chunks (fixed for a model, so still deterministic)."""
        zt = torch.from_numpy(np.ascontiguousarray(z, np.float32)).to(self.device, non_blocking=True)
        parts = zt.split(self.chunk) if self.chunk else (zt,)
        outs = []
        for part in parts:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=_use_autocast(self.device)):
                out = self.decoder(part)
            out = out.float()
            if self.sigmoid:
                out = torch.sigmoid(out)
            outs.append(out.clamp_(0, 1).mul_(255).round_().to(torch.uint8))
        return torch.cat(outs).contiguous().cpu().numpy()


def decode_uint8(model: AstroVaDEr, z: np.ndarray) -> np.ndarray:
    """Decode latent vectors to uint8 images with a one-off :class:`FastDecoder` (build one and reuse it
    when decoding many batches)."""
    return FastDecoder(model)(z)


def iter_generated(model: AstroVaDEr, n: int, spec: GenerationSpec, *, start: int = 0,
                   batch_size: int = 1024) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(first_index, uint8 images, components, z)`` for images ``start:n`` in batches, so that any
    number of images can be made with memory bounded by one batch.

    Batches lie on the fixed grid ``[k * batch_size, (k + 1) * batch_size)``; a ``start`` inside a batch
    decodes the whole grid batch and drops the head. Every image is thus decoded in the same forward pass
    (same inputs, same batch shape) however the run was interrupted, so the bytes match exactly: math
    libraries pick kernels by batch shape, and a different shape may move a pixel by one grey level."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec.validate(model.config.model.n_clusters)
    gmm = _gmm_arrays(model)
    decode = FastDecoder(model)
    for s0 in range(start - start % batch_size, n, batch_size):
        comps, z = sample_latents(gmm, s0, min(s0 + batch_size, n), spec)
        imgs = decode(z)
        skip = max(start - s0, 0)
        yield s0 + skip, imgs[skip:], comps[skip:], z[skip:]


def _catalog_rows(first: int, comps: np.ndarray, z: np.ndarray) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {"id": np.arange(first, first + len(comps), dtype=np.int64),
                                   "component": comps.astype(np.int16)}
    for j in range(z.shape[1]):
        cols[f"z_{j}"] = z[:, j].astype(np.float32)
    return pd.DataFrame(cols)


def model_fingerprint(model: AstroVaDEr) -> str:
    """A short hash of the decoder and prior weights: resuming with a different model is refused."""
    h = hashlib.sha256()
    for name, t in sorted({**model.net.decoder.state_dict(prefix="decoder."),
                           **model.net.gmm.state_dict(prefix="gmm.")}.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def generate_to_dataset(model: AstroVaDEr, out: str | Path, n: int, clusters: int | Sequence[int] | None = None,
                        weights: str = "mixture", temperature: float = 1.0, seed: int = 0, batch_size: int = 1024,
                        *, progress: bool = True, stop_after_batches: int | None = None,
                        commit_every: int | None = None) -> Path:
    """Stream ``n`` synthetic galaxies into a packed dataset at ``out``; returns ``out``.

    The catalogue holds ``id`` (0..n-1), ``component`` (the component drawn) and ``z_0..z_{J-1}`` (the
    latent vector decoded). Images are committed every ``commit_every`` images (default: about 64 MB of
    pixels, at least one batch), so memory stays bounded for any ``n``. If ``out`` already holds a dataset
    made by this function with the same model and settings, generation continues from its committed count
    (a larger ``n`` extends it) with the run's original batch size, so the bytes equal an uninterrupted run's;
    different settings are refused rather than mixed. ``stop_after_batches`` stops early, leaving the
    dataset marked incomplete (for tests of resumption)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    m = model.config.model
    spec = _spec(clusters, weights, temperature, seed)
    spec.validate(m.n_clusters)
    out = Path(out)
    gen_meta = {**spec.as_dict(), "model": model_fingerprint(model), "batch_size": int(batch_size),
                "device": model.device.type, "run_dir": str(model.run_dir_) if model.run_dir_ else None}
    done = 0
    if is_dataset(out):
        existing = Dataset(out)
        prev = existing.meta.get("generated")
        if prev is None:
            raise DatasetError(f"{out}: a dataset not written by `astrovader generate`; choose a new output")
        diffs = [k for k in ("clusters", "weights", "temperature", "seed", "model") if prev.get(k) != gen_meta[k]]
        if diffs:
            detail = ", ".join(f"{k}: {prev.get(k)!r} there, {gen_meta[k]!r} now" for k in diffs)
            raise DatasetError(f"{out}: holds a generation run with different settings ({detail}); "
                               "re-run with the same settings to resume, or choose a new output")
        done = len(existing)
        if done >= n:
            if not existing.complete:  # killed between the last commit and closing
                DatasetWriter(out, m.image_size, m.channels, append=True).close()
            return out
        if prev.get("device") != model.device.type:
            warnings.warn(f"{out}: begun on {prev.get('device')}, continued on {model.device.type}; pixels may "
                          "differ by a grey level from an uninterrupted run (different arithmetic)", stacklevel=2)
        first = int(prev.get("batch_size", batch_size))
        if first != batch_size:
            warnings.warn(f"{out}: resuming with the run's original batch size {first}, not {batch_size}, so "
                          "the images are byte-identical to an uninterrupted run", stacklevel=2)
            batch_size = gen_meta["batch_size"] = first
    per_image = m.channels * m.image_size ** 2
    commit_every = commit_every or max(batch_size, (64 << 20) // per_image)
    writer = DatasetWriter(out, m.image_size, m.channels, append=is_dataset(out),
                           meta={"source": "astrovader generate", "generated": gen_meta}, commit_every=commit_every)
    stopped = False
    try:
        with tqdm(total=n, initial=done, desc="generating", unit="img", disable=not progress) as bar:
            batches = iter_generated(model, n, spec, start=done, batch_size=batch_size)
            for b, (s, imgs, comps, z) in enumerate(batches):
                if stop_after_batches is not None and b >= stop_after_batches:
                    stopped = True
                    break
                writer.add(imgs, _catalog_rows(s, comps, z))
                bar.update(len(imgs))
    except BaseException:
        writer.commit()  # keep every whole batch made so far (Ctrl-C included); the dataset stays incomplete
        raise
    writer.close(complete=not stopped)
    return out


def generate_to_png(model: AstroVaDEr, out: str | Path, n: int, clusters: int | Sequence[int] | None = None,
                    weights: str = "mixture", temperature: float = 1.0, seed: int = 0, batch_size: int = 1024,
                    *, ncols: int | None = None, max_images: int = 4096) -> Path:
    """A PNG grid of ``n`` synthetic galaxies at their true pixel values (no stretch), for a quick look.
    Larger runs belong in a dataset; ``n`` above ``max_images`` is refused rather than making a huge PNG."""
    if not 1 <= n <= max_images:
        raise ValueError(f"a PNG grid needs 1..{max_images} images, got {n}; use --format dataset for more")
    spec = _spec(clusters, weights, temperature, seed)
    imgs = np.concatenate([b[1] for b in iter_generated(model, n, spec, batch_size=batch_size)] or
                          [np.zeros((0, model.config.model.channels, 1, 1), np.uint8)])
    return save_png_grid(imgs, out, ncols=ncols)


def generate_to_fits(model: AstroVaDEr, out: str | Path, n: int, clusters: int | Sequence[int] | None = None,
                     weights: str = "mixture", temperature: float = 1.0, seed: int = 0, batch_size: int = 1024,
                     *, progress: bool = True) -> Path:
    """A FITS file: primary HDU a float32 cube (N, H, W) (or (N, C, H, W)) in [0, 1], streamed batch by batch,
    then a BINTABLE ``CATALOG`` of id, component and z. Pixels are the dataset's uint8 values / 255, so
    every format holds the same images. Written to a temporary name and renamed, so never half-written."""
    from astropy.io import fits

    if n < 1:
        raise ValueError(f"a FITS cube needs at least one image, got n={n}")
    m = model.config.model
    spec = _spec(clusters, weights, temperature, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shape = (n, m.image_size, m.image_size) if m.channels == 1 else (n, m.channels, m.image_size, m.image_size)
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = len(shape)
    for i, size in enumerate(reversed(shape)):
        header[f"NAXIS{i + 1}"] = size
    header["EXTEND"] = True
    header["ORIGIN"] = "astrovader generate"
    for key, val in (("SEED", spec.seed), ("TEMPERAT", spec.temperature), ("WEIGHTS", spec.weights),
                     ("CLUSTERS", json.dumps(spec.as_dict()["clusters"]))):
        header[key] = val
    cat: list[pd.DataFrame] = []
    try:
        stream = fits.StreamingHDU(str(tmp), header)
        with tqdm(total=n, desc="generating", unit="img", disable=not progress) as bar:
            for s, imgs, comps, z in iter_generated(model, n, spec, batch_size=batch_size):
                arr = imgs.astype(">f4") / np.float32(255)
                stream.write(arr.astype(">f4").reshape(len(imgs), *shape[1:]))
                cat.append(_catalog_rows(s, comps, z))
                bar.update(len(imgs))
        stream.close()
        frame = pd.concat(cat, ignore_index=True) if cat else _catalog_rows(0, np.zeros(0, np.int16),
                                                                            np.zeros((0, m.latent_dim)))
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name=c, format={"int64": "K", "int16": "I"}.get(str(frame[c].dtype), "E"),
                         array=frame[c].to_numpy()) for c in frame.columns], name="CATALOG")
        fits.append(str(tmp), table.data, table.header)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# --------------------------------------------------------------------------------------------------
# cluster consistency of generated images
# --------------------------------------------------------------------------------------------------
def consistency_from_assignments(drawn: np.ndarray, assigned: np.ndarray, n_clusters: int) -> pd.DataFrame:
    """Per component drawn from: how many images, and the share the model assigns back to that component.

    This is the generative counterpart of cluster purity: a component whose samples decode to images the
    encoder places elsewhere does not describe a coherent population."""
    drawn, assigned = np.asarray(drawn), np.asarray(assigned)
    rows = []
    for k in range(n_clusters):
        sel = drawn == k
        if sel.any():
            rows.append({"component": k, "n": int(sel.sum()), "consistency": float((assigned[sel] == k).mean())})
    return pd.DataFrame(rows, columns=["component", "n", "consistency"])


@torch.no_grad()
def cluster_consistency(model: AstroVaDEr, dataset: str | Path | Dataset, *, max_images: int | None = 100_000,
                        batch_size: int = 1024, progress: bool = False) -> pd.DataFrame:
    """Predict the generated images of ``dataset`` with ``model`` (exactly as ``astrovader predict`` would)
    and compare with the ``component`` column. Uses the first ``max_images`` (draws are independent, so a
    prefix is an unbiased sample and a 10-million-image run need not be re-read)."""
    ds = open_dataset(dataset)
    if "component" not in ds.catalog.columns:
        raise DatasetError(f"{ds.path}: no 'component' column; not a dataset from `astrovader generate`")
    stop = len(ds) if max_images is None else min(len(ds), max_images)
    assigned = np.empty(stop, np.int64)
    with tqdm(total=stop, desc="consistency", unit="img", disable=not progress) as bar:
        for s, block in ds.iter_chunks(rows=max(batch_size, 8192), stop=stop):
            for b in range(0, len(block), batch_size):
                x = torch.from_numpy(block[b:b + batch_size]).float().div_(255.0)
                probs = infer_batch(model.net.eval(), x, model.device)["probs"]
                assigned[s + b:s + b + len(x)] = probs.argmax(1).cpu().numpy()
                bar.update(len(x))
    return consistency_from_assignments(ds.catalog["component"].to_numpy()[:stop], assigned,
                                        model.config.model.n_clusters)


def format_consistency(table: pd.DataFrame) -> str:
    """Human-readable consistency table plus the unweighted mean over components (each component counts
    once, so a rare but incoherent component is not hidden by a common coherent one)."""
    lines = ["component        n   assigned back"]
    for r in table.itertuples():
        lines.append(f"{r.component:>9} {r.n:>8}   {r.consistency:>8.3f}")
    if len(table):
        overall = float((table["consistency"] * table["n"]).sum() / table["n"].sum())
        lines.append(f"mean over components: {table['consistency'].mean():.3f}   (over images: {overall:.3f})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# display helpers
# --------------------------------------------------------------------------------------------------
def _display_max(images: np.ndarray, upper: float = 99.7) -> float:
    """One linear stretch 0..high percentile shared by a whole figure, so brightness differences between
    panels stay visible and one bright pixel does not set the scale."""
    if images.size == 0:
        return 1.0
    hi = float(np.percentile(images, upper))
    return hi if hi > 1e-6 else 1.0


def _panel(img: np.ndarray, vmax: float) -> np.ndarray:
    """(C, H, W) float image -> (H, W) or (H, W, 3) in [0, 1] for display."""
    x = np.clip(img / vmax, 0, 1)
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    return x[0] if x.shape[0] == 1 else x.mean(0)


def _show(ax: plt.Axes, img: np.ndarray, vmax: float) -> None:
    ax.imshow(_panel(img, vmax), cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _save(fig: plt.Figure, out: str | Path, dpi: int = 110) -> Path:
    from astrovader.analysis.figures import save_figure

    return save_figure(fig, out, dpi)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(nrows: int, ncols: int, cell: float = 0.85, hspace: float = 0.02):
    """A grid of image axes with a 'compressed' layout, which packs equal-aspect panels without the large
    margins that fixed subplot spacing leaves when the figure's shape does not match the grid's."""
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + 1.2, cell * nrows + 0.6), squeeze=False,
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


def save_png_grid(images: np.ndarray, out: str | Path, ncols: int | None = None, gap: int = 1) -> Path:
    """Tile uint8 (N, C, H, W) images into one PNG with ``gap`` white pixels between tiles (Pillow, so no
    resampling: the pixels are the data)."""
    from PIL import Image

    n, c, h, w = images.shape
    ncols = ncols or max(1, int(np.ceil(np.sqrt(n))))
    nrows = max(1, -(-n // ncols))
    canvas = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap, 3 if c == 3 else 1), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        tile = images[i].transpose(1, 2, 0) if c in (1, 3) else images[i].mean(0, keepdims=True).transpose(1, 2, 0)
        canvas[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = tile[::-1]  # origin lower
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas if c == 3 else canvas[..., 0]).save(out)
    return out


# --------------------------------------------------------------------------------------------------
# gallery (Figure 9)
# --------------------------------------------------------------------------------------------------
def gallery(model: AstroVaDEr, n_per_cluster: int = 8, clusters: Sequence[int] | None = None,
            temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """``n_per_cluster`` samples of every component (or of ``clusters``): float images in [0, 1], shape
    (K, n, C, H, W), and the component list. Each component has its own random stream (seed, k)."""
    K = model.config.model.n_clusters
    clusters = list(range(K)) if clusters is None else [int(c) for c in clusters]
    gmm = _gmm_arrays(model)
    rows = []
    for k in clusters:
        spec = GenerationSpec((k,), "mixture", temperature, int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
        spec.validate(K)
        _, z = sample_latents(gmm, 0, n_per_cluster, spec)
        rows.append(model.decode(z))
    return np.stack(rows), clusters


def plot_gallery(images: np.ndarray, clusters: Sequence[int], out: str | Path, weights: np.ndarray | None = None,
                 title: str = "Synthetic galaxies per component") -> Path:
    """One row per component, labelled with its number and mixture weight."""
    k, n = images.shape[:2]
    vmax = _display_max(images)
    fig, axes = _grid(k, n)
    for r, c in enumerate(clusters):
        for i in range(n):
            _show(axes[r, i], images[r, i], vmax)
        label = f"comp. {c}" + (f"\nπ={weights[c]:.2f}" if weights is not None else "")
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------
# shortest route (travelling salesperson)
# --------------------------------------------------------------------------------------------------
def _distances(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))


def route_length(dist: np.ndarray, route: Sequence[int], closed: bool = True) -> float:
    """Length of ``route`` (node order) under the distance matrix; a closed route returns to its start."""
    r = list(route)
    legs = list(zip(r[:-1], r[1:], strict=True)) + ([(r[-1], r[0])] if closed and len(r) > 1 else [])
    return float(sum(dist[a, b] for a, b in legs))


def held_karp(dist: np.ndarray, closed: bool = True) -> list[int]:
    """Exact shortest route by Held-Karp dynamic programming, O(2^K K^2).

    ``dp[S, j]`` is the shortest path that visits exactly the set S and ends at j. A closed tour starts at
    node 0 (any start gives the same cycle); an open path may start anywhere, so every singleton is a start."""
    K = len(dist)
    if K <= 2:
        return list(range(K))
    full = (1 << K) - 1
    dp = np.full((1 << K, K), np.inf)
    parent = np.full((1 << K, K), -1, np.int64)
    starts = [0] if closed else range(K)
    for j in starts:
        dp[1 << j, j] = 0.0
    bits = 1 << np.arange(K)
    for mask in range(1, full + 1):
        members = (mask & bits) != 0
        if members.sum() < 2:
            continue
        prev = mask ^ bits  # for each end j: the set without j
        # cand[j, i] = dp[S - {j}, i] + d(i, j); only i in S - {j} are finite
        cand = dp[prev] + dist.T
        best = cand.argmin(1)
        val = cand[np.arange(K), best]
        dp[mask, members] = val[members]
        parent[mask, members] = best[members]
    ends = dp[full] + (dist[:, 0] if closed else 0.0)
    j = int(np.argmin(ends))
    route, mask = [], full
    while j >= 0:
        route.append(j)
        pj = int(parent[mask, j])
        mask ^= 1 << j
        j = pj
    return route[::-1]


def _two_opt(dist: np.ndarray, route: list[int], closed: bool) -> list[int]:
    """Reverse segments while that shortens the route (for K above the exact limit)."""
    r = list(route)
    n = len(r)
    improved = True
    while improved:
        improved = False
        for i in range(1 if closed else 0, n - 1):
            for j in range(i + 1, n):
                a = r[i - 1] if i > 0 else None
                b = r[j + 1] if j + 1 < n else (r[0] if closed else None)
                before = (dist[a, r[i]] if a is not None else 0) + (dist[r[j], b] if b is not None else 0)
                after = (dist[a, r[j]] if a is not None else 0) + (dist[r[i], b] if b is not None else 0)
                if after < before - 1e-12:
                    r[i:j + 1] = r[i:j + 1][::-1]
                    improved = True
    return r


def shortest_route(points: np.ndarray, closed: bool = True) -> list[int]:
    """Order of ``points`` (K, J) along the shortest route through all of them: exact (Held-Karp) for
    K <= 12, else nearest-neighbour from every start followed by 2-opt (within a few per cent in practice)."""
    dist = _distances(points)
    K = len(dist)
    if K <= HELD_KARP_MAX:
        return held_karp(dist, closed)
    best: list[int] | None = None
    for s in range(K) if K <= 200 else range(1):
        route, left = [s], set(range(K)) - {s}
        while left:
            nxt = min(left, key=lambda q: dist[route[-1], q])
            route.append(nxt)
            left.remove(nxt)
        route = _two_opt(dist, route, closed)
        if best is None or route_length(dist, route, closed) < route_length(dist, best, closed):
            best = route
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# interpolation (Figure 10) and traversal (Figure 11)
# --------------------------------------------------------------------------------------------------
def interpolate(model: AstroVaDEr, z_a: np.ndarray, z_b: np.ndarray, steps: int = 8) -> np.ndarray:
    """Decode ``steps`` points on the straight line from ``z_a`` to ``z_b`` (both ends included)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = np.linspace(0, 1, steps)[:, None]
    z = (1 - t) * np.asarray(z_a, np.float64)[None] + t * np.asarray(z_b, np.float64)[None]
    return model.decode(z.astype(np.float32))


@dataclass
class LatentSummary:
    """What exploration needs to know about a real dataset: per image the latent mean, q(c|x) and the
    reconstruction error, in dataset row order."""

    mu: np.ndarray
    probs: np.ndarray
    recon_mse: np.ndarray
    dataset: Dataset

    @property
    def assigned(self) -> np.ndarray:
        return self.probs.argmax(1)


def latent_summary(model: AstroVaDEr, dataset: str | Path | Dataset,
                   predictions: str | Path | pd.DataFrame | None = None, batch_size: int = 1024,
                   progress: bool = False) -> LatentSummary:
    """Latent means, probabilities and reconstruction errors for ``dataset``: read from an
    ``astrovader predict`` catalogue when given (no second inference pass), else inferred in batches."""
    ds = open_dataset(dataset)
    J, K = model.config.model.latent_dim, model.config.model.n_clusters
    if predictions is not None:
        cat = predictions if isinstance(predictions, pd.DataFrame) else pd.read_parquet(predictions)
        if len(cat) != len(ds) or not np.array_equal(cat["id"].to_numpy(), ds.ids):
            raise ValueError("the predictions catalogue does not list the dataset's ids in order; "
                             "re-run `astrovader predict` on this dataset")
        return LatentSummary(cat[[f"z_{j}" for j in range(J)]].to_numpy(np.float32),
                             cat[[f"p_{k}" for k in range(K)]].to_numpy(np.float32),
                             cat["recon_mse"].to_numpy(np.float32), ds)
    mu, probs, mse = [], [], []
    with tqdm(total=len(ds), desc="encoding", unit="img", disable=not progress) as bar:
        for _, block in ds.iter_chunks(rows=max(batch_size, 8192)):
            for b in range(0, len(block), batch_size):
                x = torch.from_numpy(block[b:b + batch_size]).float().div_(255.0)
                res = infer_batch(model.net.eval(), x, model.device)
                mu.append(res["mu"].cpu().numpy())
                probs.append(res["probs"].cpu().numpy())
                mse.append(res["recon_mse"].cpu().numpy())
                bar.update(len(x))
    if not mu:
        raise ValueError(f"{ds.path}: the dataset is empty")
    return LatentSummary(np.concatenate(mu), np.concatenate(probs), np.concatenate(mse), ds)


def route_interpolation(model: AstroVaDEr, summary: LatentSummary, steps: int = 8,
                        closed: bool = True) -> dict[str, Any]:
    """Interpolate along the shortest route through the most probable object of each component.

    Returns ``anchors`` (dataset row per component, route order), ``components`` (route order), ``legs``:
    a list of (from component, to component, images (steps + 1, C, H, W) including both ends)."""
    K = summary.probs.shape[1]
    comps, anchors = [], []
    for k in range(K):
        i = int(np.argmax(summary.probs[:, k]))
        comps.append(k)
        anchors.append(i)
    z = summary.mu[anchors]
    order = shortest_route(z, closed=closed)
    pairs = list(zip(order[:-1], order[1:], strict=True)) + ([(order[-1], order[0])] if closed and K > 2 else [])
    legs = [(comps[a], comps[b], interpolate(model, z[a], z[b], steps + 1)) for a, b in pairs]
    return {"components": [comps[i] for i in order], "anchors": [anchors[i] for i in order], "legs": legs,
            "closed": closed and K > 2, "length": route_length(_distances(z), order, closed)}


def plot_interpolation(route: dict[str, Any], out: str | Path,
                       title: str = "Interpolation along the shortest route") -> Path:
    """One row per leg of the route; the first and last columns are the decoded anchor objects."""
    legs = route["legs"]
    ncols = legs[0][2].shape[0]
    vmax = _display_max(np.concatenate([leg[2] for leg in legs]))
    fig, axes = _grid(len(legs), ncols)
    for r, (a, b, imgs) in enumerate(legs):
        for i in range(ncols):
            _show(axes[r, i], imgs[i], vmax)
        axes[r, 0].set_ylabel(f"{a} → {b}", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"{title} (components {' → '.join(map(str, route['components']))})", fontsize=9)
    return _save(fig, out)


def save_route_animation(route: dict[str, Any], gif: str | Path, strip: str | Path, upscale: int | None = None,
                         frame_ms: int = 120) -> tuple[Path, Path]:
    """An animated GIF (looping) and a one-row frame strip PNG of the route, with the figures' stretch.
    Each leg's last frame is the next leg's first, so it is dropped to avoid a stutter."""
    from PIL import Image

    legs = route["legs"]
    frames = np.concatenate([leg[2][:-1] for leg in legs] + [legs[-1][2][-1:]])
    vmax = _display_max(frames)
    h = frames.shape[-1]
    upscale = upscale or max(1, 128 // h)
    # A closed tour ends where it began: the looping GIF drops that repeated frame, the strip shows it.
    gif_frames = frames[:-1] if route.get("closed") else frames
    disp = _to_uint8_display(gif_frames, vmax, upscale)[:, ::-1]  # origin lower, as in the figures
    pil = [Image.fromarray(f) for f in disp]
    gif, strip = Path(gif), Path(strip)
    gif.parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=frame_ms, loop=0)
    small = _to_uint8_display(frames, vmax, max(1, 64 // h))[:, ::-1]
    gap = np.full((small.shape[1], 2, *small.shape[3:]), 255, np.uint8)
    row = np.concatenate([x for f in small for x in (f, gap)][:-1], axis=1)
    Image.fromarray(row).save(strip)
    return gif, strip


def traverse(model: AstroVaDEr, latents: np.ndarray, steps: int = 9) -> np.ndarray:
    """Vary each latent variable from its minimum to its maximum over ``latents`` (N, J), the others held
    at their mean: images (J, steps, C, H, W). For odd ``steps`` the two halves are spaced separately
    (min..mean, mean..max) so the centre column is the 'mean galaxy' exactly, as in the paper's Figure 11."""
    lat = np.asarray(latents, np.float64)
    if lat.ndim != 2 or len(lat) == 0:
        raise ValueError(f"latents must be a non-empty (N, J) array, got shape {lat.shape}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    mean, lo, hi = lat.mean(0), lat.min(0), lat.max(0)
    J = lat.shape[1]
    z = np.repeat(mean[None, None], J * steps, 0).reshape(J, steps, J)
    for j in range(J):
        if steps % 2:
            half = steps // 2
            vals = np.concatenate([np.linspace(lo[j], mean[j], half + 1), np.linspace(mean[j], hi[j], half + 1)[1:]])
        else:
            vals = np.linspace(lo[j], hi[j], steps)
        z[j, :, j] = vals
    imgs = model.decode(z.reshape(J * steps, J).astype(np.float32))
    return imgs.reshape(J, steps, *imgs.shape[1:])


def plot_traversal(images: np.ndarray, out: str | Path, latents: np.ndarray | None = None,
                   title: str = "Latent traversal (others at their mean)") -> Path:
    """J rows x M columns; each row labelled with its variable and range."""
    J, M = images.shape[:2]
    vmax = _display_max(images)
    fig, axes = _grid(J, M, cell=0.8)
    for j in range(J):
        for i in range(M):
            _show(axes[j, i], images[j, i], vmax)
        label = f"$z_{{{j}}}$"
        if latents is not None:
            label += f"\n[{latents[:, j].min():.1f}, {latents[:, j].max():.1f}]"
        axes[j, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel("min", fontsize=8)
    axes[-1, M // 2].set_xlabel("mean" if M % 2 else "", fontsize=8)
    axes[-1, -1].set_xlabel("max", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------
# deblending (Figure 12)
# --------------------------------------------------------------------------------------------------
def _nearest_by_pixels(ds: Dataset, target: np.ndarray, rows: np.ndarray, exclude: int) -> tuple[int, float]:
    """Row among ``rows`` whose image has the lowest pixel MSE to ``target`` (uint8), read in chunks."""
    best, best_mse = -1, np.inf
    rows = np.sort(rows[rows != exclude])
    t = target.astype(np.float32) / 255.0
    for s in range(0, len(rows), 4096):
        idx = rows[s:s + 4096]
        imgs = ds.take(idx).astype(np.float32) / 255.0
        mse = ((imgs - t[None]) ** 2).reshape(len(idx), -1).mean(1)
        i = int(np.argmin(mse))
        if mse[i] < best_mse:
            best, best_mse = int(idx[i]), float(mse[i])
    return best, best_mse


def deblend(model: AstroVaDEr, summary: LatentSummary, companion_component: int | None = None,
            galaxy: int | None = None, steps: int = 8, n_examples: int = 1) -> list[dict[str, Any]]:
    """Crude deblending by interpolation (paper section 5.3, Figure 12).

    The companion component defaults to the one whose members reconstruct worst on average (secondary
    sources are what the decoder reproduces least well). For each of the ``n_examples`` most probable
    members (or the given ``galaxy`` row): its most probable *other* component is taken as its morphological
    class, the member of that class with the lowest pixel MSE to it is its clean counterpart, and the latent
    line between the two is decoded. Returns dicts with rows, components, MSE and images (input, strip,
    counterpart input)."""
    K = summary.probs.shape[1]
    if K < 2:
        raise ValueError("deblending needs at least two components")
    assigned = summary.assigned
    if companion_component is None:
        means = np.array([summary.recon_mse[assigned == k].mean() if (assigned == k).any() else -np.inf
                          for k in range(K)])
        companion_component = int(np.argmax(means))
    if not 0 <= companion_component < K:
        raise ValueError(f"companion component must be in 0..{K - 1}, got {companion_component}")
    c = companion_component
    if galaxy is not None:
        targets = [int(galaxy)]
    else:
        members = np.flatnonzero(assigned == c)
        pool = members if len(members) else np.arange(len(assigned))
        targets = [int(i) for i in pool[np.argsort(-summary.probs[pool, c])][:n_examples]]
    results = []
    for g in targets:
        others = [int(k) for k in np.argsort(-summary.probs[g]) if k != c and (assigned == k).any()]
        # A degenerate model may assign everything to one component: then search all other galaxies.
        rows = np.flatnonzero(assigned == others[0]) if others else np.arange(len(assigned))
        target_img = summary.dataset.take([g])[0]
        partner, mse = _nearest_by_pixels(summary.dataset, target_img, rows, exclude=g)
        partner_comp = others[0] if others else int(assigned[partner])
        strip = interpolate(model, summary.mu[g], summary.mu[partner], steps + 1)
        results.append({"galaxy": g, "galaxy_id": summary.dataset.ids[g], "component": c,
                        "partner": partner, "partner_id": summary.dataset.ids[partner],
                        "partner_component": partner_comp, "pixel_mse": mse,
                        "galaxy_image": target_img.astype(np.float32) / 255.0,
                        "partner_image": summary.dataset.take([partner])[0].astype(np.float32) / 255.0,
                        "strip": strip})
    return results


def plot_deblend(results: list[dict[str, Any]], out: str | Path,
                 title: str = "Deblending by interpolation") -> Path:
    """Per example: the input galaxy, the decoded line (ends are reconstructions) and the counterpart's input."""
    ncols = results[0]["strip"].shape[0] + 2
    allimgs = np.concatenate([np.concatenate([r["strip"], r["galaxy_image"][None], r["partner_image"][None]])
                              for r in results])
    vmax = _display_max(allimgs)
    fig, axes = _grid(len(results), ncols, cell=0.9, hspace=0.08)
    for r, res in enumerate(results):
        panels = [res["galaxy_image"], *res["strip"], res["partner_image"]]
        for i, img in enumerate(panels):
            _show(axes[r, i], img, vmax)
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
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------
# all four figures for a run
# --------------------------------------------------------------------------------------------------
def generation_figures(model: AstroVaDEr, dataset: str | Path | Dataset, out_dir: str | Path, *,
                       predictions: str | Path | pd.DataFrame | None = None, n_per_cluster: int = 8,
                       steps: int = 8, traverse_steps: int = 9, companion_component: int | None = None,
                       closed: bool = True, temperature: float = 1.0, seed: int = 0,
                       progress: bool = False) -> list[tuple[str, Path]]:
    """Write the gallery, route interpolation (+ GIF and frame strip), traversal and deblending figures for
    a run to ``out_dir``; returns (title, PNG path) for the four figures, for reports. Dataset latents are
    computed once (or read from ``predictions``) and shared by the three exploration figures."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = latent_summary(model, dataset, predictions, progress=progress)
    weights = _gmm_arrays(model)[0]
    figs: list[tuple[str, Path]] = []
    imgs, comps = gallery(model, n_per_cluster, temperature=temperature, seed=seed)
    t = f"Synthetic galaxies per component (z ~ N(μ_c, T σ²_c), T = {temperature:g})"
    figs.append((t, plot_gallery(imgs, comps, out_dir / "gallery.png", weights, title=t)))
    route = route_interpolation(model, summary, steps=steps, closed=closed)
    t = "Interpolation along the shortest route through each component's most probable object"
    figs.append((t, plot_interpolation(route, out_dir / "interpolation.png", title="Shortest-route interpolation")))
    save_route_animation(route, out_dir / "interpolation.gif", out_dir / "interpolation_strip.png")
    trav = traverse(model, summary.mu, traverse_steps)
    t = "Latent traversal: each variable from its minimum to its maximum, others at their mean"
    figs.append((t, plot_traversal(trav, out_dir / "traversal.png", summary.mu)))
    if summary.probs.shape[1] >= 2:
        res = deblend(model, summary, companion_component, steps=steps, n_examples=3)
        t = (f"Deblending by interpolation from component {res[0]['component']} to the most similar galaxy "
             "of each example's next most probable component")
        figs.append((t, plot_deblend(res, out_dir / "deblending.png", title="Deblending by interpolation")))
    return figs
