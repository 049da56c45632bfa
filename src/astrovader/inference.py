"""The one inference path: latent means and log-variances, cluster probabilities, reconstructions and decoded
images, streamed over a dataset (or an in-memory array) in bounded memory.

uint8 pixels travel to the device as bytes (a quarter of the transfer) and are scaled there. The precision
follows :func:`astrovader.runtime.inference_bf16`: bf16 on CUDA GPUs, float32 elsewhere. Every consumer
(``predict``, the report, exploration, the estimator, the benchmark, the consistency check) goes through
:func:`iter_inference` or :func:`infer`, so they all see the same numbers for the same image.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from astrovader.data.dataset import Dataset, open_dataset
from astrovader.model import AstroVaDErNet
from astrovader.runtime import inference_bf16

ImageSource = Dataset | str | Path | np.ndarray | torch.Tensor
READ_ROWS = 8192  # dataset rows read per block: large reads, bounded memory

def as_image_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as an (N, C, H, W) tensor, left as uint8 (0..255) or checked to be float in [0, 1].
    (N, H, W) arrays get a channel axis."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    t = t.float()
    if t.numel() and (t.min() < -1e-6 or t.max() > 1 + 1e-6):
        raise ValueError("float images must be scaled to [0, 1] (or pass uint8 images)")
    return t


def as_float_images(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) images, (N, C, H, W) or (N, H, W), as a float32 tensor in [0, 1]."""
    t = as_image_tensor(x)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


def _device_of(net: AstroVaDErNet) -> torch.device:
    return next(net.parameters()).device


def _scaled_on(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images on ``device`` as float in [0, 1]: uint8 travels as bytes and is scaled there."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _no_images(net: AstroVaDErNet) -> np.ndarray:
    m = net.cfg.model
    return np.zeros((0, m.channels, m.image_size, m.image_size), np.float32)


@torch.no_grad()
def infer_batch(net: AstroVaDErNet, x: torch.Tensor, reconstruct: bool = True) -> dict[str, torch.Tensor]:
    """Everything the catalogue holds for one batch of uint8 images, or float images already scaled to [0, 1]:
    ``mu``, ``logvar``, ``probs`` (exact posterior q(c|x)) and, unless ``reconstruct=False`` (which skips the
    decoder), ``recon_mse`` (mean squared error of the decoded latent mean, pixels in [0, 1])."""
    device = _device_of(net)
    x = _scaled_on(x, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=inference_bf16(device)):
        mu, logvar = net.encode(x)
        recon = net.decode(mu) if reconstruct else None
    mu, logvar = mu.float(), logvar.float()
    out = {"mu": mu, "logvar": logvar, "probs": net.gmm.posterior(mu)}
    if recon is not None:
        out["recon_mse"] = (recon.float() - x).pow(2).flatten(1).mean(1)
    return out


@dataclass
class Predictions:
    """Per-image inference results for ``rows`` of a dataset (or of an array), in that order.

    Shapes: ``mu`` and ``logvar`` (N, J), ``probs`` (N, K), ``recon_mse`` (N,) or None when the decoder was
    skipped."""

    rows: np.ndarray
    mu: np.ndarray
    logvar: np.ndarray
    probs: np.ndarray
    recon_mse: np.ndarray | None

    @property
    def labels(self) -> np.ndarray:
        """The most probable component of each image."""
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=np.int64)

    def as_dict(self) -> dict[str, np.ndarray]:
        out = {"mu": self.mu, "logvar": self.logvar, "probs": self.probs}
        return out | ({"recon_mse": self.recon_mse} if self.recon_mse is not None else {})


def check_geometry(net: AstroVaDErNet, shape: tuple[int, ...], what: str) -> None:
    """Refuse images whose (C, H, W) differ from the model's, with a message naming both."""
    m = net.cfg.model
    if tuple(shape) != (m.channels, m.image_size, m.image_size):
        raise ValueError(f"{what} has images of shape {tuple(shape)} (C, H, W) but the model expects "
                         f"({m.channels}, {m.image_size}, {m.image_size}); use a model trained on such images or "
                         "re-ingest with the model's --size (and --colour for 3 bands)")


def _blocks(images: ImageSource, rows: np.ndarray | None, start: int, stop: int | None,
            block: int) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray | torch.Tensor]]]:
    """(number of images, iterator of (row numbers, uint8 or float image block)) for a dataset or an array."""
    if isinstance(images, Dataset | str | Path):
        ds = open_dataset(images)
        if rows is None:
            stop = len(ds) if stop is None else min(stop, len(ds))

            def from_range() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for s, arr in ds.iter_chunks(rows=block, start=start, stop=stop):
                    yield np.arange(s, s + len(arr)), arr
            return max(stop - start, 0), from_range()
        rows = np.asarray(rows, dtype=np.int64)

        def from_rows() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for s in range(0, len(rows), block):
                yield rows[s:s + block], ds.take(rows[s:s + block])
        return len(rows), from_rows()
    t = as_image_tensor(images)
    sel = np.arange(len(t))[start:stop] if rows is None else np.asarray(rows, dtype=np.int64)

    def from_array() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for s in range(0, len(sel), block):
            r = sel[s:s + block]
            yield r, t[torch.from_numpy(r)] if len(r) != len(t) else t
    return len(sel), from_array()


def iter_inference(net: AstroVaDErNet, images: ImageSource, *, rows: np.ndarray | None = None, start: int = 0,
                   stop: int | None = None, batch_size: int = 1024, reconstruct: bool = True,
                   progress: bool = False,
                   desc: str = "inference") -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows, results)`` batch by batch for a dataset (directory or :class:`Dataset`) or an image array:
    all rows, rows ``start:stop``, or the given ``rows``. Results are NumPy arrays as in :func:`infer_batch`.
    Memory is bounded by one read block whatever the dataset size."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    net.eval()
    n, blocks = _blocks(images, rows, start, stop, max(batch_size, READ_ROWS))
    checked = False
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for r, block in blocks:
            if not checked:
                check_geometry(net, tuple(block.shape[1:]), str(getattr(images, "path", images))
                               if isinstance(images, Dataset | str | Path) else "the array")
                checked = True
            x = block if torch.is_tensor(block) else torch.from_numpy(np.ascontiguousarray(block))
            for b in range(0, len(x), batch_size):
                res = infer_batch(net, x[b:b + batch_size], reconstruct)
                yield r[b:b + batch_size], {k: v.cpu().numpy() for k, v in res.items()}
                bar.update(min(batch_size, len(x) - b))


def infer(net: AstroVaDErNet, images: ImageSource, **kwargs) -> Predictions:
    """:func:`iter_inference` gathered into one :class:`Predictions` (keyword arguments as there)."""
    rows, parts = [], []
    for r, res in iter_inference(net, images, **kwargs):
        rows.append(r)
        parts.append(res)
    J, K = net.cfg.model.latent_dim, net.cfg.model.n_clusters
    if not parts:
        empty = np.zeros((0,), np.float32)
        return Predictions(np.zeros(0, np.int64), np.zeros((0, J), np.float32), np.zeros((0, J), np.float32),
                           np.zeros((0, K), np.float32), empty if kwargs.get("reconstruct", True) else None)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Predictions(np.concatenate(rows), cat["mu"], cat["logvar"], cat["probs"], cat.get("recon_mse"))


@torch.no_grad()
def decode(net: AstroVaDErNet, z: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Float images in [0, 1], (N, C, H, W), for latent vectors ``z`` of shape (N, J)."""
    device = _device_of(net)
    zt = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    net.eval()
    outs = []
    for s in range(0, len(zt), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=inference_bf16(device)):
            out = net.decode(zt[s:s + batch_size].to(device))
        outs.append(out.float().clamp(0, 1).cpu())
    return torch.cat(outs).numpy() if outs else _no_images(net)


@torch.no_grad()
def reconstruct(net: AstroVaDErNet, images: ImageSource, rows: np.ndarray | None = None,
                batch_size: int = 512) -> np.ndarray:
    """Decoded latent means of images (a dataset's ``rows``, or an array) as float images in [0, 1]."""
    device = _device_of(net)
    _, blocks = _blocks(images, rows, 0, None, max(batch_size, READ_ROWS))
    net.eval()
    outs = []
    for _, block in blocks:
        x = block if torch.is_tensor(block) else torch.from_numpy(np.ascontiguousarray(block))
        check_geometry(net, tuple(x.shape[1:]), "the input")
        for b in range(0, len(x), batch_size):
            xb = _scaled_on(x[b:b + batch_size], device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=inference_bf16(device)):
                out = net.decode(net.encode(xb)[0])
            outs.append(out.float().clamp(0, 1).cpu())
    return torch.cat(outs).numpy() if outs else _no_images(net)


class FastDecoder:
    """An inference copy of the model's decoder in channels-last memory format.

    Convolutions and bilinear up-sampling on channels-last tensors are 2-4x faster on CPUs (oneDNN) and use
    tensor cores on GPUs; the copy leaves the model itself untouched for training and other callers."""

    def __init__(self, net: AstroVaDErNet):
        self.device = _device_of(net)
        self.decoder = copy.deepcopy(net.decoder).eval().to(memory_format=torch.channels_last)
        self.sigmoid = bool(self.decoder.bce)
        for p in self.decoder.parameters():
            p.requires_grad_(False)
        self.chunk = self.cpu_chunk(net) if self.device.type == "cpu" else None

    @staticmethod
    def cpu_chunk(net: AstroVaDErNet, cache_bytes: int = 4 << 20) -> int:
        """Images per forward pass on a CPU: as many as keep the largest decoder activation within a few MB.
        Past that the activations fall out of cache and a batch of 1024 runs slower than one of 64."""
        m = net.cfg.model
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
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=inference_bf16(self.device)):
                out = self.decoder(part)
            out = out.float()
            if self.sigmoid:
                out = torch.sigmoid(out)
            outs.append(out.clamp_(0, 1).mul_(255).round_().to(torch.uint8))
        return torch.cat(outs).contiguous().cpu().numpy()
