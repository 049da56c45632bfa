"""The one inference path: latent means and log-variances, cluster probabilities, reconstructions and decoded
images, streamed over a dataset (or an in-memory array) in bounded memory.

uint8 pixels travel to the device as bytes (a quarter of the transfer) and are scaled there. The network runs
as a channels-last inference copy (:class:`InferenceNet`), on CPUs in cache-sized chunks, in float32 unless
``precision="bf16"`` is asked for (:mod:`astrovader.compute`). Every consumer (``predict``, the report,
exploration, the estimator, the benchmark, the consistency check, ``generate``) goes through this module, so
they all see the same numbers for the same image.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from astrovader.compute import check_precision, inference_autocast, inference_channels_last
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.errors import InputError
from astrovader.model import AstroVaDErNet

ImageSource = Dataset | str | Path | np.ndarray | torch.Tensor
READ_ROWS = 8192  # dataset rows read per block: large reads, bounded memory

def as_image_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as an (N, C, H, W) tensor, left as uint8 (0..255) or checked to be float in [0, 1].
    (N, H, W) arrays get a channel axis."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise InputError(f"images must have shape (N, C, H, W) or (N, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    t = t.float()
    if t.numel() and (t.min() < -1e-6 or t.max() > 1 + 1e-6):
        raise InputError("float images must be scaled to [0, 1] (or pass uint8 images)")
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


def _parameter_key(net: AstroVaDErNet) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer is replaced or modified in place (training, loading weights)."""
    return tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))


# one inference copy per live network, rebuilt when its weights change
_COPIES: weakref.WeakKeyDictionary[AstroVaDErNet, tuple[tuple, AstroVaDErNet]] = weakref.WeakKeyDictionary()


def _inference_copy(net: AstroVaDErNet) -> AstroVaDErNet:
    """A channels-last copy of ``net`` in eval mode, or ``net`` itself where channels-last does not help. A copy,
    so that the caller's network (which may go on training) keeps its own memory format."""
    if not inference_channels_last(_device_of(net)):
        return net.eval()
    key = _parameter_key(net)
    hit = _COPIES.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    fast = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    _COPIES[net] = (key, fast)
    return fast


def cpu_chunk(largest_activation: int, itemsize: int, cache_bytes: int = 8 << 20) -> int:
    """Images per forward pass on a CPU: as many as keep the largest activation (``largest_activation``
    values per image, ``itemsize`` bytes each) within a few MB. Past that the activations fall out of cache
    and a batch of 1024 runs several times slower than one of 32 (benchmarks/RESULTS.md)."""
    per_image = largest_activation * itemsize
    return int(2 ** np.clip(np.floor(np.log2(max(cache_bytes // per_image, 1))), 3, 10))


class InferenceNet:
    """A network as inference runs it: a channels-last copy, on CPUs in cache-sized chunks (fixed for a model and
    precision, so results are deterministic). ``encode`` and ``decode`` return float32 tensors on the network's
    device.

    ``precision="bf16"`` runs the decoder (reconstructions, their error, generated images) under bf16 autocast.
    The encoder stays float32: in bf16 it moved the sharp posteriors of a K = 3 model by up to 0.07 in
    probability (benchmarks/RESULTS.md), more than a catalogue should move for speed."""

    def __init__(self, net: AstroVaDErNet, precision: str = "float32"):
        self.net = net
        self.precision = check_precision(precision)
        self.device = _device_of(net)
        self.fast = _inference_copy(net)
        m = net.cfg.model
        enc = max(f * (m.image_size // 2 ** i) ** 2 for i, f in enumerate(m.encoder_filters))
        side = m.image_size // 2 ** len(m.decoder_filters)
        dec = max(f * (side * 2 ** (i + 1)) ** 2 for i, f in enumerate(m.decoder_filters))
        cpu = self.device.type == "cpu"
        self.encode_chunk = cpu_chunk(enc, 4) if cpu else None
        self.decode_chunk = cpu_chunk(dec, 2 if precision == "bf16" else 4) if cpu else None

    @staticmethod
    def _parts(t: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, ...]:
        return t.split(chunk) if chunk else (t,)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (N, J), of float images (N, C, H, W) in [0, 1] already on the device."""
        if self.fast is not self.net:
            x = x.contiguous(memory_format=torch.channels_last)
        mus, logvars = [], []
        for part in self._parts(x, self.encode_chunk):
            mu, logvar = self.fast.encode(part)  # float32 whatever the precision: see the class docstring
            mus.append(mu.float())
            logvars.append(logvar.float())
        return torch.cat(mus), torch.cat(logvars)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images (N, C, H, W), as ``AstroVaDErNet.decode`` makes them, for latent vectors (N, J) on the
        device."""
        outs = []
        for part in self._parts(z, self.decode_chunk):
            with inference_autocast(self.device, self.precision):
                out = self.fast.decode(part)
            outs.append(out.float())
        return torch.cat(outs).contiguous() if outs else torch.zeros(0)

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images clamped to [0, 1] (N, C, H, W)."""
        return self.decode(z).clamp_(0, 1)


def _engine(engine: InferenceNet | None, net: AstroVaDErNet, precision: str) -> InferenceNet:
    """``engine`` when it runs ``net`` at ``precision``, else a new one."""
    if engine is not None and engine.net is net and engine.precision == precision:
        return engine
    return InferenceNet(net, precision)


@torch.no_grad()
def infer_batch(net: AstroVaDErNet, x: torch.Tensor, reconstruct: bool = True, precision: str = "float32",
                engine: InferenceNet | None = None) -> dict[str, torch.Tensor]:
    """Everything the catalogue holds for one batch of uint8 images, or float images already scaled to [0, 1]:
    ``mu``, ``logvar``, ``probs`` (exact posterior q(c|x), in float32 whatever the precision) and, unless
    ``reconstruct=False`` (which skips the decoder), ``recon_mse`` (mean squared error of the decoded latent
    mean, pixels in [0, 1]). ``engine`` reuses an :class:`InferenceNet` of ``net`` across batches."""
    engine = _engine(engine, net, precision)
    x = _scaled_on(x, engine.device)
    mu, logvar = engine.encode(x)
    out = {"mu": mu, "logvar": logvar, "probs": net.gmm.posterior(mu)}
    if reconstruct:
        out["recon_mse"] = (engine.decode(mu) - x).pow(2).flatten(1).mean(1)
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
        raise InputError(f"{what} has images of shape {tuple(shape)} (C, H, W) but the model expects "
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
                   progress: bool = False, desc: str = "inference",
                   precision: str = "float32") -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows, results)`` batch by batch for a dataset (directory or :class:`Dataset`) or an image array:
    all rows, rows ``start:stop``, or the given ``rows``. Results are NumPy arrays as in :func:`infer_batch`.
    Memory is bounded by one read block whatever the dataset size."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    engine = InferenceNet(net, precision)
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
                res = infer_batch(net, x[b:b + batch_size], reconstruct, precision, engine)
                yield r[b:b + batch_size], {k: v.cpu().numpy() for k, v in res.items()}
                bar.update(min(batch_size, len(x) - b))


def infer(net: AstroVaDErNet, images: ImageSource, **kwargs) -> Predictions:
    """:func:`iter_inference` gathered into one :class:`Predictions` (keyword arguments as there)."""
    rows, parts = [], []
    for r, res in iter_inference(net, images, **kwargs):
        rows.append(r)
        parts.append(res)
    J, K = net.cfg.model.latent_dim, net.cfg.model.n_components
    if not parts:
        empty = np.zeros((0,), np.float32)
        return Predictions(np.zeros(0, np.int64), np.zeros((0, J), np.float32), np.zeros((0, J), np.float32),
                           np.zeros((0, K), np.float32), empty if kwargs.get("reconstruct", True) else None)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Predictions(np.concatenate(rows), cat["mu"], cat["logvar"], cat["probs"], cat.get("recon_mse"))


@torch.no_grad()
def decode(net: AstroVaDErNet, z: np.ndarray | torch.Tensor, batch_size: int = 1024,
           precision: str = "float32") -> np.ndarray:
    """Float images in [0, 1], (N, C, H, W), for latent vectors ``z`` of shape (N, J)."""
    engine = InferenceNet(net, precision)
    zt = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    outs = [engine.images(zt[s:s + batch_size].to(engine.device)).cpu() for s in range(0, len(zt), batch_size)]
    return torch.cat(outs).numpy() if outs else _no_images(net)


@torch.no_grad()
def reconstruct(net: AstroVaDErNet, images: ImageSource, rows: np.ndarray | None = None,
                batch_size: int = 512, precision: str = "float32") -> np.ndarray:
    """Decoded latent means of images (a dataset's ``rows``, or an array) as float images in [0, 1]."""
    engine = InferenceNet(net, precision)
    _, blocks = _blocks(images, rows, 0, None, max(batch_size, READ_ROWS))
    outs = []
    for _, block in blocks:
        x = block if torch.is_tensor(block) else torch.from_numpy(np.ascontiguousarray(block))
        check_geometry(net, tuple(x.shape[1:]), "the input")
        for b in range(0, len(x), batch_size):
            mu, _ = engine.encode(_scaled_on(x[b:b + batch_size], engine.device))
            outs.append(engine.images(mu).cpu())
    return torch.cat(outs).numpy() if outs else _no_images(net)


class FastDecoder:
    """Latent vectors to uint8 images (the dataset format's pixels), as ``generate`` writes them."""

    def __init__(self, net: AstroVaDErNet, precision: str = "float32"):
        self.engine = InferenceNet(net, precision)

    @torch.inference_mode()
    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Decode latent vectors (N, J) to uint8 images (N, C, H, W), rounding x * 255 as ingest does."""
        zt = torch.from_numpy(np.ascontiguousarray(z, np.float32)).to(self.engine.device, non_blocking=True)
        return self.engine.images(zt).mul_(255).round_().to(torch.uint8).cpu().numpy()
