"""Synthetic galaxies: the one sampler and its writers (dataset, PNG grid, FITS cube) and the component-consistency
check of what it made (paper section 5.3).

Images are made as in the paper: choose a component c (fixed, cycled through a list, or drawn from the mixture
weights or uniformly), draw z ~ N(mu_c, T * var_c) and decode. The authors' script used half the fitted variance;
``temperature`` (default 1, the fitted prior) exposes that choice.

Reproducibility and resumption rest on one rule: the random numbers of image ``i`` come only from
``(seed, i // RNG_BLOCK)``. The images therefore do not depend on the batch size, on where an interrupted run
stopped, or on how many images were asked for, so re-running a killed ``generate`` continues from the committed
count and yields exactly the bytes an uninterrupted run would have written. :func:`sample`,
``AstroVaDEr.sample``, ``astrovader generate`` and the gallery all draw from this one stream.

Arrays follow the package's orientation convention: row 0 is the top of the image. The FITS cube is written
with FITS's own convention (row 0 at the bottom), so ds9 shows it the right way up.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from astrovader.compute import check_precision
from astrovader.data.dataset import Dataset, DatasetError, DatasetWriter, is_dataset, open_dataset
from astrovader.data.grids import save_png_grid
from astrovader.data.noise import SkyNoise
from astrovader.data.outputs import remove_stale_temporaries, temporary_name
from astrovader.errors import InputError
from astrovader.inference import FastDecoder, iter_inference
from astrovader.model import AstroVaDErNet
from astrovader.runs import Run, fits_cards, network_of

RNG_BLOCK = 256  # images per independent random stream; fixed so output never depends on batch size
COMPONENT_DRAWS = ("mixture", "uniform")  # how a component is chosen when none is given
DEFAULT_BATCH = 1024

@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides which images a generation run makes (besides the model weights).

    Stored in the output dataset's ``dataset.json`` so a re-run can tell whether it is continuing the same
    run (resume) or would silently mix two different ones (refused)."""

    components: tuple[int, ...] | None = None
    weights: str = "mixture"
    temperature: float = 1.0
    seed: int = 0
    precision: str = "float32"  # of the decoder: "bf16" moves some pixels by a grey level or two
    noise: SkyNoise | None = None  # survey sky noise added to every stamp (None: the noiseless mean)

    def validate(self, n_components: int) -> None:
        if self.weights not in COMPONENT_DRAWS:
            raise InputError(f"weights must be one of {', '.join(COMPONENT_DRAWS)}, got {self.weights!r}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise InputError(f"temperature must be a positive number, got {self.temperature}")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        check_precision(self.precision)
        if self.components is not None:
            if len(self.components) == 0:
                raise InputError("clusters must name at least one component")
            bad = [c for c in self.components if not 0 <= c < n_components]
            if bad:
                raise InputError(f"component must be in 0..{n_components - 1}, got {bad}")

    def as_dict(self) -> dict[str, Any]:
        return {"clusters": None if self.components is None else list(self.components), "weights": self.weights,
                "temperature": float(self.temperature), "seed": int(self.seed), "precision": self.precision,
                "noise": self.noise.as_dict() if self.noise is not None else None}


def _spec(components: int | Sequence[int] | None, weights: str, temperature: float, seed: int,
          precision: str = "float32", noise: SkyNoise | None = None) -> GenerationSpec:
    cl = None if components is None else tuple(int(c) for c in np.atleast_1d(np.asarray(components)))
    return GenerationSpec(cl, weights, float(temperature), int(seed), precision, noise)


def gmm_arrays(net: AstroVaDErNet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixture weights, means and variances (K, J) -- or Cholesky factors (K, J, J) for a full-covariance
    prior -- as float64 NumPy arrays (sampled on the host so that the latent vectors are identical on every
    device and platform)."""
    g = net.gmm
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
    if spec.components is not None:  # cycled by global index: balanced counts, independent of batching
        comps = np.asarray(spec.components, np.int64)[np.arange(start, stop) % len(spec.components)]
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


def _noise(spec: GenerationSpec, start: int, stop: int, shape: tuple[int, ...]) -> np.ndarray:
    """The sky noise of images ``start:stop``: block b = i // RNG_BLOCK draws its field from
    ``default_rng([seed, 2, b])``, so, like the latent vectors, it does not depend on the batching."""
    assert spec.noise is not None
    b0, b1 = start // RNG_BLOCK, (stop - 1) // RNG_BLOCK
    field = np.concatenate([spec.noise.field(np.random.default_rng([spec.seed, 2, b]), (RNG_BLOCK, *shape))
                            for b in range(b0, b1 + 1)])
    return field[start - b0 * RNG_BLOCK:stop - b0 * RNG_BLOCK]


def iter_generated(net: AstroVaDErNet, n: int, spec: GenerationSpec, *, start: int = 0,
                   batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(first_index, uint8 images, components, z)`` for images ``start:n`` in batches, so that any
    number of images can be made with memory bounded by one batch.

    Batches lie on the fixed grid ``[k * batch_size, (k + 1) * batch_size)``; a ``start`` inside a batch
    decodes the whole grid batch and drops the head. Every image is thus decoded in the same forward pass
    (same inputs, same batch shape) however the run was interrupted, so the bytes match exactly: math
    libraries pick kernels by batch shape, and a different shape may move a pixel by one grey level."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    spec.validate(net.cfg.model.n_components)
    gmm = gmm_arrays(net)
    decode = FastDecoder(net, spec.precision)
    for s0 in range(start - start % batch_size, n, batch_size):
        comps, z = sample_latents(gmm, s0, min(s0 + batch_size, n), spec)
        imgs = decode(z)
        if spec.noise is not None:
            imgs = spec.noise.add(imgs, _noise(spec, s0, s0 + len(imgs), imgs.shape[1:]))
        skip = max(start - s0, 0)
        yield s0 + skip, imgs[skip:], comps[skip:], z[skip:]


def sample(net: AstroVaDErNet, n: int, spec: GenerationSpec,
           batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``0:n`` of the stream ``spec`` as one array: uint8 images (n, C, H, W), components (n,) and latent
    vectors (n, J). Exactly what ``astrovader generate`` writes for the same settings."""
    parts = list(iter_generated(net, n, spec, batch_size=batch_size))
    m = net.cfg.model
    if not parts:
        return (np.zeros((0, m.channels, m.image_size, m.image_size), np.uint8), np.zeros(0, np.int16),
                np.zeros((0, m.latent_dim), np.float32))
    return tuple(np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))  # type: ignore[return-value]


def gallery(net: AstroVaDErNet, n_per_component: int = 8, components: Sequence[int] | None = None,
            temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """``n_per_component`` samples of every component (or of ``components``): float images in [0, 1] of shape
    (K, n, C, H, W), and the component list. The images are those of ``astrovader generate --component 0 1 ...
    --n K*n --seed seed`` (components cycled), so the gallery shows what the generator writes."""
    K = net.cfg.model.n_components
    components = list(range(K)) if components is None else [int(c) for c in components]
    imgs, _, _ = sample(net, n_per_component * len(components), _spec(components, "mixture", temperature, seed))
    grid = imgs.reshape(n_per_component, len(components), *imgs.shape[1:]).swapaxes(0, 1)
    return grid.astype(np.float32) / np.float32(255), components


def _catalog_rows(first: int, comps: np.ndarray, z: np.ndarray) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {"id": np.arange(first, first + len(comps), dtype=np.int64),
                                   "component": comps.astype(np.int16)}
    for j in range(z.shape[1]):
        cols[f"z_{j}"] = z[:, j].astype(np.float32)
    return pd.DataFrame(cols)


def model_fingerprint(net: AstroVaDErNet) -> str:
    """A short hash of the decoder and prior weights: resuming with a different model is refused."""
    h = hashlib.sha256()
    for name, t in sorted({**net.decoder.state_dict(prefix="decoder."),
                           **net.gmm.state_dict(prefix="gmm.")}.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _resume_from(out: Path, gen_meta: dict[str, Any], n: int, device: str) -> tuple[int, bool]:
    """How many images an earlier generation run into ``out`` committed (0 for a new output) and whether it was left
    incomplete. Refuses a dataset of other settings or of more than ``n`` images; a resumed run takes over the
    original batch size (written into ``gen_meta``) so its bytes equal an uninterrupted run's."""
    if not is_dataset(out):
        return 0, False
    existing = Dataset(out)
    prev = existing.meta.get("generated")
    if prev is None:
        raise DatasetError(f"{out}: a dataset not written by `astrovader generate`; choose a new output")
    prev = {"precision": "float32", "noise": None, **prev}  # written before these were settings
    diffs = [k for k in ("clusters", "weights", "temperature", "seed", "precision", "noise", "model")
             if prev.get(k) != gen_meta[k]]
    if diffs:
        detail = ", ".join(f"{k}: {prev.get(k)!r} there, {gen_meta[k]!r} now" for k in diffs)
        raise DatasetError(f"{out}: holds a generation run with different settings ({detail}); "
                           "re-run with the same settings to resume, or choose a new output")
    done = len(existing)
    if done > n:
        raise DatasetError(f"{out}: already holds {done} generated images, more than the {n} asked for; choose "
                           "a new output, ask for at least as many to extend it, or pass --overwrite")
    if done < n:
        if prev.get("device") != device:
            warnings.warn(f"{out}: begun on {prev.get('device')}, continued on {device}; pixels may differ by a "
                          "grey level from an uninterrupted run (different arithmetic)", stacklevel=3)
        first = int(prev.get("batch_size", gen_meta["batch_size"]))
        if first != gen_meta["batch_size"]:
            warnings.warn(f"{out}: resuming with the run's original batch size {first}, not "
                          f"{gen_meta['batch_size']}, so the images are byte-identical to an uninterrupted run",
                          stacklevel=3)
            gen_meta["batch_size"] = first
    return done, not existing.complete


def generate_to_dataset(model: AstroVaDErNet | Run, out: str | Path, n: int,
                        components: int | Sequence[int] | None = None, weights: str = "mixture",
                        temperature: float = 1.0, seed: int = 0, batch_size: int = DEFAULT_BATCH, *,
                        progress: bool = True,
                        stop_after_batches: int | None = None, commit_every: int | None = None,
                        precision: str = "float32", noise: SkyNoise | None = None) -> Path:
    """Stream synthetic galaxies into a packed dataset.

    The catalogue holds ``id`` (0..n-1), ``component`` (the component drawn) and ``z_0..z_{J-1}`` (the latent vector
    decoded). Images are committed in blocks, so memory stays bounded for any ``n``. If ``out`` already holds a
    dataset made with the same model and settings, generation continues from its committed count (a larger ``n``
    extends it) with the original batch size, so the bytes equal an uninterrupted run's; different settings are
    refused rather than mixed.

    Parameters
    ----------
    model : AstroVaDErNet or Run
        The network, or a run (whose name is recorded).
    out : path-like
        The dataset directory.
    n : int
        Number of galaxies.
    components : int or sequence of int, optional
        Draw from these components only, cycled in order.
    weights : {"mixture", "uniform"}, default "mixture"
        How each galaxy's component is drawn when ``components`` is not given.
    temperature : float, default 1.0
        Scale of the latent variances.
    seed : int, default 0
        Random seed.
    batch_size : int
        Galaxies decoded at once.
    progress : bool, default True
        Show a progress bar.
    stop_after_batches : int, optional
        Stop early, leaving the dataset incomplete (for tests of resumption).
    commit_every : int, optional
        Images per commit (default: about 64 MB of pixels, at least one batch).
    precision : {"float32", "bf16"}, default "float32"
        The decoder's arithmetic.
    noise : SkyNoise, optional
        Survey sky noise to add (:func:`astrovader.data.noise.dataset_sky_noise`); None keeps the noiseless mean.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    net = network_of(model)
    m = net.cfg.model
    device = next(net.parameters()).device
    spec = _spec(components, weights, temperature, seed, precision, noise)
    spec.validate(m.n_components)
    out = Path(out)
    gen_meta = {**spec.as_dict(), "model": model_fingerprint(net), "batch_size": int(batch_size),
                "device": device.type, "run_dir": model.name if isinstance(model, Run) else None}
    done, unfinished = _resume_from(out, gen_meta, n, device.type)
    if done == n and is_dataset(out):
        if unfinished:  # killed between the last commit and closing
            DatasetWriter(out, m.image_size, m.channels, append=True).close()
        return out
    batch_size = gen_meta["batch_size"]
    per_image = m.channels * m.image_size ** 2
    commit_every = commit_every or max(batch_size, (64 << 20) // per_image)
    writer = DatasetWriter(out, m.image_size, m.channels, append=is_dataset(out),
                           meta={"source": "astrovader generate", "generated": gen_meta}, commit_every=commit_every)
    stopped = False
    try:
        with tqdm(total=n, initial=done, desc="generating", unit="img", disable=not progress) as bar:
            batches = iter_generated(net, n, spec, start=done, batch_size=batch_size)
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


def generate_to_png(model: AstroVaDErNet | Run, out: str | Path, n: int, components: int | Sequence[int] | None = None,
                    weights: str = "mixture", temperature: float = 1.0, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                    *, ncols: int | None = None, max_images: int = 4096, tile_px: int = 96,
                    precision: str = "float32", noise: SkyNoise | None = None) -> Path:
    """A PNG grid of synthetic galaxies at their stored pixel values, for a quick look.

    Each tile is enlarged to at least ``tile_px`` pixels by repeating pixels and captioned with its component.

    Parameters
    ----------
    model : AstroVaDErNet or Run
        The network, or a run.
    out : path-like
        The PNG file.
    n : int
        Number of galaxies, 1..``max_images``.
    components, weights, temperature, seed, batch_size, precision, noise
        As for :func:`generate_to_dataset`.
    ncols : int, optional
        Tiles per row (default: about square).
    max_images : int, default 4096
        The largest grid made; larger runs belong in a dataset.
    tile_px : int, default 96
        Smallest tile side in the PNG.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    if not 1 <= n <= max_images:
        raise InputError(f"a PNG grid needs 1..{max_images} images, got {n}; use --format dataset for more")
    spec = _spec(components, weights, temperature, seed, precision, noise)
    imgs, comps = sample(network_of(model), n, spec, batch_size)[:2]
    scale = max(1, -(-tile_px // imgs.shape[-1]))
    return save_png_grid(imgs, out, ncols=ncols, scale=scale, labels=[f"comp. {int(k)}" for k in comps])


def generate_to_fits(model: AstroVaDErNet | Run, out: str | Path, n: int, components: int | Sequence[int] | None = None,
                     weights: str = "mixture", temperature: float = 1.0, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                     *, progress: bool = True, command: str | None = None, precision: str = "float32",
                     noise: SkyNoise | None = None) -> Path:
    """A FITS file of synthetic galaxies: a float32 cube and a ``CATALOG`` table.

    The primary HDU is a cube (N, H, W) (or (N, C, H, W)) of the dataset's uint8 values / 255, streamed batch by
    batch and stored bottom row first, as FITS viewers expect; the ``CATALOG`` BINTABLE holds id, component and z.
    Written to a temporary name and renamed, so never half-written.

    Parameters
    ----------
    model : AstroVaDErNet or Run
        The network, or a run, whose provenance then goes into the header.
    out : path-like
        The FITS file.
    n : int
        Number of galaxies, at least 1.
    components, weights, temperature, seed, batch_size, precision, noise
        As for :func:`generate_to_dataset`.
    progress : bool, default True
        Show a progress bar.
    command : str, optional
        The command line, recorded as ``COMMAND``.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from astropy.io import fits

    if n < 1:
        raise InputError(f"a FITS cube needs at least one image, got n={n}")
    net = network_of(model)
    m = net.cfg.model
    spec = _spec(components, weights, temperature, seed, precision, noise)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a killed earlier run's partial cube
    tmp = temporary_name(out, ".fits")
    shape = (n, m.image_size, m.image_size) if m.channels == 1 else (n, m.channels, m.image_size, m.image_size)
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = len(shape)
    for i, size in enumerate(reversed(shape)):
        header[f"NAXIS{i + 1}"] = size
    header["EXTEND"] = True
    header["ORIGIN"] = "astrovader generate"
    header["BUNIT"] = ("", "dimensionless: dataset pixel values / 255 (asinh-stretched)")
    prov = model.provenance(command) if isinstance(model, Run) else {}
    for key, val, comment in fits_cards(prov):
        header[key] = (val, comment)
    if "PIXSCALE" in prov:  # the stamps' angular scale, offsets from the stamp centre (no sky position)
        for axis in (1, 2):
            header[f"CTYPE{axis}"] = ("OFFSET", "angular offset from the stamp centre")
            header[f"CUNIT{axis}"] = "arcsec"
            header[f"CDELT{axis}"] = (float(prov["PIXSCALE"]), "[arcsec/pixel]")
            header[f"CRPIX{axis}"] = ((m.image_size + 1) / 2, "the stamp centre")
            header[f"CRVAL{axis}"] = 0.0
    for key, val, comment in (
            ("GENSEED", spec.seed, "seed of the draws (generate --seed)"),
            ("TEMPERAT", spec.temperature, "scale of the component variances"),
            ("DRAW", spec.weights, "how components are drawn without --component"),
            ("CLUSTERS", "drawn" if spec.components is None else " ".join(map(str, spec.components)),
             "components sampled from"),
            ("PRECISN", spec.precision, "network arithmetic: float32 or bf16"),
            ("NOISE", spec.noise.sigma if spec.noise else 0.0, "sky noise sigma added (0: noiseless mean)"),
            ("NOISECOR", spec.noise.correlation if spec.noise else 0.0, "neighbour correlation of that noise")):
        header[key] = (val, comment)
    cat: list[pd.DataFrame] = []
    try:
        stream = fits.StreamingHDU(str(tmp), header)
        with tqdm(total=n, desc="generating", unit="img", disable=not progress) as bar:
            for s, imgs, comps, z in iter_generated(net, n, spec, batch_size=batch_size):
                # FITS row 0 is the bottom of the image, ours the top: flip so ds9 shows it the right way up.
                arr = imgs[..., ::-1, :].astype(">f4") / np.float32(255)
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


def consistency_from_assignments(drawn: np.ndarray, assigned: np.ndarray, n_components: int) -> pd.DataFrame:
    """Per component drawn from: how many images, and the share the model assigns back to that component.

    This is the generative counterpart of cluster purity: a component whose samples decode to images the
    encoder places elsewhere does not describe a coherent population."""
    drawn, assigned = np.asarray(drawn), np.asarray(assigned)
    rows = []
    for k in range(n_components):
        sel = drawn == k
        if sel.any():
            rows.append({"component": k, "n": int(sel.sum()), "consistency": float((assigned[sel] == k).mean())})
    return pd.DataFrame(rows, columns=["component", "n", "consistency"])


@torch.no_grad()
def component_consistency(net: AstroVaDErNet, dataset: str | Path | Dataset, *, max_images: int | None = 100_000,
                        batch_size: int = DEFAULT_BATCH, progress: bool = False) -> pd.DataFrame:
    """Predict the generated images of ``dataset`` with ``net`` (exactly as ``astrovader predict`` would)
    and compare with the ``component`` column. Uses the first ``max_images`` (draws are independent, so a
    prefix is an unbiased sample and a 10-million-image run need not be re-read)."""
    ds = open_dataset(dataset)
    if "component" not in ds.catalog.columns:
        raise DatasetError(f"{ds.path}: no 'component' column; not a dataset from `astrovader generate`")
    stop = len(ds) if max_images is None else min(len(ds), max_images)
    assigned = np.empty(stop, np.int64)
    for rows, res in iter_inference(net, ds, stop=stop, batch_size=batch_size, reconstruct=False,
                                    progress=progress, desc="consistency"):
        assigned[rows] = res["probs"].argmax(1)
    return consistency_from_assignments(ds.catalog["component"].to_numpy()[:stop], assigned,
                                        net.cfg.model.n_components)


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
