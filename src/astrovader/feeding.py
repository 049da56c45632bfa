"""Feeding training: which rows train and validate, uint8 batches on the device, and augmentation.

Every random draw is made for the whole global batch and sliced per rank (``shard=(rank, world)``), so a
data-parallel run sees exactly the batches, flips and shifts a single process would.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from astrovader.config import TrainConfig
from astrovader.data.dataset import Dataset
from astrovader.errors import InputError


def to_float(x_uint8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def random_flips(x: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Independent random horizontal and vertical flips per image, done on x's device in two ops.

    ``x`` is this rank's slice of a global batch (``shard=(rank, world)``): the flip decisions are drawn for
    the whole global batch and sliced, so they do not depend on how many ranks share it."""
    n_global = x.shape[0] * shard[1]
    h = shard_slice(torch.rand(n_global, device=x.device, generator=generator) < 0.5, shard)
    v = shard_slice(torch.rand(n_global, device=x.device, generator=generator) < 0.5, shard)
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


def random_affine(x: torch.Tensor, generator: torch.Generator, max_rotate_deg: float, max_shift_px: float,
                  shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Rotate each image by a uniform angle in +-max_rotate_deg and shift it by up to +-max_shift_px pixels
    per axis, all images at once on x's device (one :func:`warp`). Pixels brought in from
    outside the stamp repeat its border (sky for galaxies, background for digits), so no artificial black
    edges appear. The draws are made for the global batch and sliced per rank, like ``random_flips``."""
    n_global = x.shape[0] * shard[1]
    u = shard_slice(torch.rand(n_global, 3, device=x.device, generator=generator), shard) * 2 - 1
    angle = u[:, 0] * math.radians(max_rotate_deg)
    shift = u[:, 1:] * (2 * max_shift_px / x.shape[-1])  # grid coordinates span 2 over the image width
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return warp(x, theta)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) resampled bilinearly through its affine map ``theta`` (B, 2, 3), from
    output to input coordinates as for ``F.affine_grid`` (align_corners=False), the border repeated. The grid is
    ``affine_grid``'s maths as one batched matmul: on CPUs ``F.affine_grid`` took 4x the time of the warp itself."""
    B, _, H, W = x.shape
    xs = (torch.arange(W, device=x.device, dtype=x.dtype) * 2 + 1) / W - 1
    ys = (torch.arange(H, device=x.device, dtype=x.dtype) * 2 + 1) / H - 1
    base = torch.stack([xs.expand(H, W), ys[:, None].expand(H, W), torch.ones(H, W, device=x.device,
                                                                              dtype=x.dtype)], -1)
    grid = torch.matmul(base.reshape(1, H * W, 3), theta.to(x.dtype).transpose(1, 2)).reshape(B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator, t: TrainConfig,
            shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The training-time augmentation the config asks for: random flips, then a random rotation and shift."""
    if t.flips:
        x = random_flips(x, generator, shard)
    if t.augment_rotate > 0 or t.augment_shift > 0:
        x = random_affine(x, generator, t.augment_rotate, t.augment_shift, shard)
    return x


def contrastive_view(x: torch.Tensor, generator: torch.Generator, t: TrainConfig,
                     shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """A random view of each image of ``x`` (B, C, H, W) in [0, 1] that a galaxy's class does not depend on, all
    images at once on x's device: one affine warp (any angle, a random flip, a scale of +-``t.view_scale``, a
    shift of up to +-``t.view_shift`` px; the border repeats, as in ``random_affine``), a Gaussian blur of sigma
    up to ``t.view_blur`` px, a gain of 10^u (|u| <= ``t.view_gain``) and Gaussian noise of sigma up to
    ``t.view_noise``. Draws are made for the global batch and sliced per rank, like ``random_flips``.

    The gain multiplies the stored values: on linear pixels it is a change of brightness; on stretched ones it
    changes brightness and contrast together, which is also nothing a class depends on."""
    n_global, (_, C, H, W) = x.shape[0] * shard[1], x.shape
    u = shard_slice(torch.rand(n_global, 8, device=x.device, generator=generator), shard)
    angle = u[:, 0] * (2 * math.pi)
    inv_scale = 1 / (1 + (u[:, 1] * 2 - 1) * t.view_scale)  # the grid maps output to input coordinates
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0).to(x.dtype)
    shift = (u[:, 3:5] * 2 - 1) * (2 * t.view_shift / W)
    cos, sin = angle.cos() * inv_scale, angle.sin() * inv_scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    y = warp(x, theta)
    if t.view_blur > 0:
        # a separable Gaussian per image as two batched matmuls (rows normalised, so flux is kept at the
        # edges too): a grouped convolution with one kernel per image was 3x slower on CPUs
        sigma = (u[:, 5] * t.view_blur).clamp_min(1e-3).to(x.dtype)
        rows, cols = (torch.arange(n, device=x.device, dtype=x.dtype) for n in (H, W))
        def smoothing(r: torch.Tensor) -> torch.Tensor:
            m = torch.exp(-0.5 * ((r[:, None] - r[None, :])[None] / sigma[:, None, None]) ** 2)
            return (m / m.sum(-1, keepdim=True))[:, None]  # (B, 1, n, n)
        y = torch.matmul(torch.matmul(smoothing(rows), y), smoothing(cols).transpose(-1, -2))
    gain = 10 ** ((u[:, 6] * 2 - 1) * t.view_gain)
    y = y * gain.to(x.dtype)[:, None, None, None]
    if t.view_noise > 0:
        noise = shard_slice(torch.randn(n_global, C, H, W, device=x.device, generator=generator), shard)
        y = y + noise.to(x.dtype) * (u[:, 7] * t.view_noise).to(x.dtype)[:, None, None, None]
    return y.clamp(0, 1)


class BatchFeeder:
    """Serves uint8 image batches on the training device without per-image Python work.

    Small datasets (under ``max_resident_gb``) are copied to the device once and indexed there. Larger
    ones are streamed: blocks of consecutive rows, in a random order, are read by a background thread,
    pinned, moved to the device in one transfer and shuffled there.
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray, device: torch.device, max_resident_gb: float,
                 block_rows: int = 16384):
        self.dataset, self.device = dataset, device
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.n = len(self.indices)
        per_image = dataset.channels * dataset.image_size**2
        self.resident = self.n * per_image <= max_resident_gb * 1e9
        self.block_rows = block_rows
        self.data: torch.Tensor | None = None
        if self.resident:
            self.data = torch.from_numpy(self._read(self.indices)).to(device)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx):  # contiguous: one slice
            return self.dataset.read(int(idx[0]), int(idx[-1]) + 1)
        return self.dataset.take(idx)

    def batches(self, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                drop_last: bool = True, shard: tuple[int, int] = (0, 1)) -> Iterator[torch.Tensor]:
        """Global batches in a random order drawn from ``generator``. With ``shard=(rank, world)`` each
        rank receives its contiguous slice of every global batch; all ranks must pass generators in the
        same state, so that together they see exactly the batches a single process would."""
        if self.resident:
            assert self.data is not None
            for pos in positions(self.n, batch_size, generator, shard, shuffle, drop_last):
                yield self.data[pos]
            return
        for batch in self._streamed(batch_size, generator, shuffle, drop_last):
            yield batch[shard_slice(torch.arange(len(batch), device=batch.device), shard)]

    def _streamed(self, batch_size: int, generator: torch.Generator, shuffle: bool,
                  drop_last: bool) -> Iterator[torch.Tensor]:
        blocks = [self.indices[s:s + self.block_rows] for s in range(0, self.n, self.block_rows)]
        order = (torch.randperm(len(blocks), generator=torch.Generator().manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())))
            .tolist() if shuffle else list(range(len(blocks))))
        q: queue.Queue = queue.Queue(maxsize=2)

        def reader() -> None:
            for b in order:
                arr = torch.from_numpy(self._read(blocks[b]))
                q.put(arr.pin_memory() if self.device.type == "cuda" else arr)
            q.put(None)

        threading.Thread(target=reader, daemon=True).start()
        carry: torch.Tensor | None = None
        while (block := q.get()) is not None:
            block = block.to(self.device, non_blocking=True)
            if shuffle:
                block = block[torch.randperm(len(block), device=self.device, generator=generator)]
            if carry is not None:
                block = torch.cat([carry, block])
            full = len(block) - len(block) % batch_size
            for s in range(0, full, batch_size):
                yield block[s:s + batch_size]
            carry = block[full:] if full < len(block) else None
        if carry is not None and len(carry) and not (drop_last and self.n >= batch_size):
            yield carry


def positions(n: int, batch_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1),
               shuffle: bool = True, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Global batches of positions in range(n) (shuffled by ``generator``), this rank's slice of each."""
    order = (torch.randperm(n, device=generator.device, generator=generator) if shuffle
             else torch.arange(n, device=generator.device))
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield shard_slice(order[s:s + batch_size], shard)


def shard_slice(positions: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    rank, world = shard
    if world == 1:
        return positions
    per = -(-len(positions) // world)
    return positions[rank * per:(rank + 1) * per]


def train_validation_rows(ds: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows: the dataset's ``split`` column if present, else a seeded fraction."""
    if "split" in ds.catalog.columns:
        train = ds.split_indices("train")
        if len(train) == 0:
            raise InputError(f"{ds.path}: the catalogue's 'split' column has no 'train' rows")
        return train, ds.split_indices("validation")
    n = len(ds)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = int(round(n * cfg.validation_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
