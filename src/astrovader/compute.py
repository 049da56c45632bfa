"""Where and how computations run: the device, the one numeric-precision policy, seeds and data-parallel helpers.

Precision policy (one place, used by training, inference and sampling):

* training uses bf16 autocast when ``train.bf16`` is set and the device has fast bf16 (CUDA GPUs, CPUs with
  AVX512-BF16 or AMX), and channels-last memory when ``train.channels_last`` is set;
* inference (catalogues, reports, scores) and sampling run in channels-last memory on CPUs and CUDA GPUs and in
  float32, unless the caller asks for ``precision="bf16"`` (``--precision bf16``), which runs the decoder
  (reconstructions, generated images) in bf16 and leaves the encoder, and so every latent and probability, in
  float32. bf16 is opt-in, so the pixels a run makes do not depend on the machine, and provenance records it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from astrovader.config import Config
from astrovader.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"device {name!r} is not a device torch knows; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA device is available; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r}: Apple's MPS is not available here; use auto or cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r}: astrovader runs on cpu, cuda or mps")
    return dev


@functools.cache
def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: CUDA GPUs with bf16 support, and CPUs with native
    bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs bf16 convolutions about twice as fast.
    Cached: it is asked for every validation batch and reads /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)
    return False


def training_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether training steps run under bf16 autocast (``train.bf16`` on a device with fast bf16)."""
    return cfg.train.bf16 and fast_bf16(device)


def training_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether training keeps images and activations in channels-last memory format."""
    return cfg.train.channels_last and device.type in ("cuda", "cpu")


PRECISIONS = ("float32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def inference_autocast(device: torch.device, precision: str = "float32") -> torch.autocast:
    """The autocast context of inference and sampling: bf16 only when asked for, float32 otherwise. On a
    device without fast bf16 the bf16 mode still runs (and agrees as well) but gains nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def inference_channels_last(device: torch.device) -> bool:
    """Whether inference and sampling use a channels-last copy of the network (oneDNN's fast layout on CPUs,
    tensor cores on GPUs). Its float32 results agree with the contiguous network's to float32 rounding."""
    return device.type in ("cpu", "cuda")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random stream of one epoch (``epoch`` may be a negative key for non-epoch draws)."""
    return (seed * 1_000_003 + epoch + 7919) % (2**63 - 1)


@dataclass(frozen=True)
class DistInfo:
    """Data-parallel layout. One process per device; ``world == 1`` is the ordinary single-device run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()


def distributed_setup() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else run alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_(t: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def barrier(dist_info: DistInfo) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_parameters(net: torch.nn.Module, dist_info: DistInfo) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for p in net.state_dict().values():
                dist.broadcast(p, src=0)
