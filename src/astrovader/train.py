"""s3VDC training: the schedule as data, the epoch loop, mini-batch GMM initialisation and checkpoints.

Phases (Cao et al. 2020, as used by AstroVaDEr):

1. gamma-training for ``gamma_epochs``: loss = recon + gamma * KL(q(z|x) || N(0, I)); GMM frozen.
2. mini-batch GMM initialisation after the last gamma epoch: latent means of ``gmm_init_batches``
   random training batches -> k-means -> diagonal GaussianMixture started at the k-means centres
   (or, with ``gmm_init_embedding = "umap"``, clusters found on a UMAP graph of those latent means).
   Optionally ``align_epochs`` of alignment: the GMM KL as in the static phase, but with q(c|x) fixed to each
   initialisation image's initial cluster, plus a cross-entropy making that cluster the most probable one.
3. ``periods`` x (annealing for ``anneal_epochs`` with beta = (t / anneal_epochs)^power rising 0 -> 1,
   then static for ``static_epochs`` with beta = 1): loss = recon + (beta + gamma) * scale * GMM KL.

The whole state needed to continue (network, GMM, optimizer, epoch, history) is one safetensors file
written atomically after every epoch, so a run killed at any moment resumes from its last full epoch.
Every source of randomness is re-seeded from (seed, epoch), which makes a resumed CPU run reproduce an
uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from astrovader.compute import (
    SINGLE_PROCESS,
    DistInfo,
    all_reduce_,
    barrier,
    broadcast_parameters,
    distributed_setup,
    epoch_seed,
    resolve_device,
    training_bf16,
    training_channels_last,
)
from astrovader.config import Config
from astrovader.data.dataset import Dataset, atomic_write_bytes, is_dataset, open_dataset
from astrovader.data.locks import exclusive
from astrovader.errors import InputError
from astrovader.feeding import (
    BatchFeeder,
    augment,
    contrastive_view,
    positions,
    shard_slice,
    to_float,
    train_validation_rows,
)
from astrovader.gmm_init import alignment_set, init_batches, initialise_mixture, neighbour_set, reseed_mixture
from astrovader.model import AstroVaDErNet, nt_xent, scan_loss, vade_losses
from astrovader.runs import (
    CHECKPOINT,
    CONFIG,
    DATASET_NOTE,
    HISTORY,
    INIT_CLUSTERS,
    RESTARTS_DIR,
    RESTARTS_NOTE,
    TRAINING_ROWS,
    WEIGHTS,
    load_checkpoint,
    load_config,
    record_training_rows,
    save_checkpoint,
)
from astrovader.schedule import EpochPlan, schedule


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops and the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    net: AstroVaDErNet
    history: list[dict[str, Any]]
    run_dir: Path


def train(cfg: Config, dataset: str | Path | Dataset, run_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, stop_after_epoch: int | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or continue training) a model on ``dataset``, writing everything to ``run_dir``.

    With ``train.restarts = R > 1`` it trains R models, from seeds ``seed + 1000 r``, into
    ``run_dir/restarts/seed-S`` and makes the one with the lowest mean training loss in its last epoch the run
    (its files are copied into ``run_dir``; ``restarts.json`` lists every candidate's loss). Like k-means'
    ``n_init``: the loss is the model's own objective, so choosing by it uses no labels.

    ``stop_after_epoch`` ends the run early after that epoch, as a kill would (for tests and for
    splitting a long run into sessions); the run can then be resumed. A run directory that already holds a run
    is continued only with ``resume`` (and the same settings) and replaced only with ``overwrite``.

    Under ``torchrun --nproc-per-node N`` the global batch ``train.batch_size`` is split over N ranks.
    Every rank draws the same global permutation, flips and reparameterisation noise and uses its slice,
    gradients are averaged with one coalesced all-reduce per step, the GMM initialisation runs on rank 0
    and is broadcast, and only rank 0 writes checkpoints: an N-rank run follows the 1-rank run with the
    same global batch up to floating-point summation order.

    The run directory is locked for the whole call (:mod:`astrovader.data.locks`): a second ``train`` into it,
    ``--overwrite`` included, is refused while this one runs."""
    locked = exclusive(run_dir) if os.environ.get("RANK", "0") == "0" else nullcontext()  # torchrun: rank 0 writes
    with locked:
        return _train(cfg, dataset, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                      stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end)


def _train(cfg: Config, dataset: str | Path | Dataset, run_dir: str | Path, *, resume: bool = False,
           overwrite: bool = False, progress: bool = True, stop_after_epoch: int | None = None,
           on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    cfg.validate()
    if cfg.train.restarts > 1:
        return _best_of_restarts(cfg, dataset, Path(run_dir), resume=resume, overwrite=overwrite, progress=progress,
                                 stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end)
    dist_info = distributed_setup()
    ds = open_dataset(dataset)
    m, t = cfg.model, cfg.train
    if (ds.image_size, ds.channels) != (m.image_size, m.channels):
        raise InputError(f"dataset {ds.path} has {ds.channels}-channel {ds.image_size}px images but the config "
                         f"expects model.channels={m.channels}, model.image_size={m.image_size}; set those keys "
                         "or re-ingest with --size")
    if t.batch_size % dist_info.world:
        raise InputError(f"train.batch_size={t.batch_size} must be divisible by the number of ranks "
                         f"({dist_info.world})")
    run_dir = Path(run_dir)
    net, opt, device, cl = _build(cfg, dist_info)

    history: list[dict[str, Any]] = []
    start = 0
    _check_run_dir(run_dir, ds, resume, overwrite)
    if resume and (run_dir / CHECKPOINT).exists():
        _refuse_changed_settings(run_dir, cfg)
        start, history = load_checkpoint(run_dir, net, opt, device)
        start += 1
        history = history[:start]
    broadcast_parameters(net, dist_info)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
        if start == 0:
            (run_dir / DATASET_NOTE).write_text(str(Path(ds.path).resolve()) + "\n")

    train_idx, val_idx = train_validation_rows(ds, t)
    if len(train_idx) < t.batch_size:
        raise InputError(f"{len(train_idx)} training images is fewer than train.batch_size={t.batch_size}")
    if dist_info.is_main and (start == 0 or not (run_dir / TRAINING_ROWS).exists()):
        fingerprint = ds.meta.get("fingerprint") if isinstance(ds.meta.get("fingerprint"), dict) else {}
        record_training_rows(run_dir, ds.ids[train_idx].tolist(), fingerprint.get("ids"))
    feeder = BatchFeeder(ds, train_idx, device, t.max_resident_gb)
    val_idx = val_idx[dist_info.rank::dist_info.world]
    val_feeder = BatchFeeder(ds, val_idx, device, t.max_resident_gb) if len(val_idx) else None

    step_fn = _make_step(net, opt, cfg, device, dist_info)
    shard = (dist_info.rank, dist_info.world)
    plans = schedule(cfg)
    # the last epoch of each annealing + static period: where empty mixture components are re-seeded
    period = t.anneal_epochs + t.static_epochs
    first = t.gamma_epochs + t.align_epochs
    period_ends = {first + (k + 1) * period - 1 for k in range(t.periods)} if period else set()
    align_set: tuple[torch.Tensor, torch.Tensor] | None = None
    scan_images: torch.Tensor | None = None
    init_labels: np.ndarray | None = None
    tb = _tensorboard(run_dir) if t.tensorboard and dist_info.is_main else None
    bar = tqdm(total=len(plans), initial=start, desc="training", unit="epoch",
               disable=not progress or not dist_info.is_main, dynamic_ncols=True)
    try:
        for plan in plans[start:]:
            t0 = time.perf_counter()
            g = torch.Generator(device=device).manual_seed(epoch_seed(t.seed, plan.epoch))
            torch.manual_seed(epoch_seed(t.seed, plan.epoch) + 1)
            for group in opt.param_groups:
                group["lr"] = plan.lr
            net.train()
            if plan.phase == "align" and align_set is None:
                align_set = alignment_set(feeder, cfg, device, run_dir, dist_info, init_labels)
            elif plan.phase != "align":
                align_set = None  # frees the alignment images once that phase is over
            if plan.phase == "scan" and scan_images is None:  # the same images every scan epoch: drawn once
                scan_images = torch.cat(list(init_batches(feeder, t, device, -1)))
            scan_set = neighbour_set(net, scan_images, cfg) if plan.phase == "scan" else None
            sums = _train_pass(step_fn, plan, feeder, align_set or scan_set, g, shard, cl, t.batch_size, device)
            all_reduce_(sums, dist_info)
            train_means = (sums[:6] / sums[6].clamp_min(1)).tolist()  # the one host sync of the epoch
            row = _epoch_row(plan, train_means, cfg)
            _refuse_divergence(train_means, plan, start, run_dir)
            if val_feeder is not None or dist_info.world > 1:
                v = evaluate(net, val_feeder, cfg, plan, device, dist_info=dist_info)
                if v is not None:
                    row.update(val_total=v[0], val_recon=v[1], val_kl_unit=v[2], val_kl_gmm=v[3])
            if plan.phase == "gamma" and plan.epoch == t.gamma_epochs - 1:
                init_labels = initialise_mixture(net, feeder, cfg, device, dist_info, run_dir)
            elif plan.epoch in period_ends and t.reseed_min_fraction > 0:
                reseed_mixture(net, feeder, cfg, device, dist_info, plan.epoch, row)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if dist_info.is_main:
                save_checkpoint(run_dir, net, opt, plan.epoch, history)
            barrier(dist_info)
            _report_epoch(row, plan, tb, bar, on_epoch_end)
            if stop_after_epoch is not None and plan.epoch >= stop_after_epoch:
                break
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    return TrainResult(net, history, run_dir)


def _build(cfg: Config, dist_info: DistInfo) -> tuple[AstroVaDErNet, torch.optim.Optimizer, torch.device, bool]:
    """The network on this rank's device (channels-last where that is faster), its optimiser, the device, and
    whether inputs go channels-last."""
    t = cfg.train
    device = resolve_device(t.device)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(t.seed)
    net = AstroVaDErNet(cfg).to(device)
    cl = training_channels_last(cfg, device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    if not t.learn_weights:
        net.gmm.logits.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=t.lr)
    return net, opt, device, cl


def _train_pass(step_fn: Callable[..., torch.Tensor], plan: EpochPlan, feeder: BatchFeeder,
                phase_set: tuple[torch.Tensor, torch.Tensor] | None, g: torch.Generator, shard: tuple[int, int],
                cl: bool, batch_size: int, device: torch.device) -> torch.Tensor:
    """One epoch's optimisation steps: on the alignment set (images, initial clusters) in the align phase, on the
    neighbour set (images, neighbours' positions) in the scan phase, on the training rows otherwise; the summed
    loss terms and image count, on the device (no host sync)."""
    sums = torch.zeros(7, device=device, dtype=torch.float64)
    if phase_set is not None and plan.phase == "scan":
        images, neighbours = phase_set
        for pos in positions(len(images), batch_size, g, shard):
            # one of each galaxy's neighbours at random (drawn for the whole batch's positions, like everything)
            pick = torch.randint(0, neighbours.shape[1], (len(pos),), device=device, generator=g)
            partner = to_float(images[neighbours[pos, pick]], cl)
            sums += step_fn(to_float(images[pos], cl), plan, g, neighbours=partner)
    elif phase_set is not None:
        images, labels = phase_set
        for pos in positions(len(images), batch_size, g, shard):
            sums += step_fn(to_float(images[pos], cl), plan, g, labels[pos])
    else:
        for xb in feeder.batches(batch_size, g, shard=shard):
            sums += step_fn(to_float(xb, cl), plan, g)
    return sums


def _epoch_row(plan: EpochPlan, train_means: list[float], cfg: Config) -> dict[str, Any]:
    """The history row of a finished epoch's training terms; the contrastive and scan terms only where used."""
    row: dict[str, Any] = {
        "epoch": plan.epoch, "phase": plan.phase, "beta": plan.beta,
        "kl_weight": plan.kl_gmm_weight if plan.phase != "gamma" else plan.kl_unit_weight,
        "lr": plan.lr, "train_total": train_means[0], "train_recon": train_means[1],
        "train_kl_unit": train_means[2], "train_kl_gmm": train_means[3]}
    if cfg.loss.contrastive:
        row["train_contrastive"] = train_means[4]
    if plan.phase == "scan":
        row["train_scan"] = train_means[5]
    return row


def _refuse_divergence(train_means: list[float], plan: EpochPlan, start: int, run_dir: Path) -> None:
    if not all(math.isfinite(v) for v in train_means):
        raise TrainingDiverged(
            f"non-finite loss in epoch {plan.epoch} ({plan.phase} phase): total={train_means[0]}, "
            f"recon={train_means[1]}, kl_unit={train_means[2]}, kl_gmm={train_means[3]}; "
            + (f"the last good checkpoint (epoch {plan.epoch - 1}) is kept in {run_dir}"
               if plan.epoch > start else "no epoch of this run finished, so nothing new was saved")
            + ". Try a smaller train.lr or train.clip_value.")


def _report_epoch(row: dict[str, Any], plan: EpochPlan, tb: Any, bar: Any,
                  on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
    """One finished epoch to TensorBoard, the caller's callback and the progress bar."""
    if tb is not None:
        for k, val in row.items():
            if isinstance(val, float):
                tb.add_scalar(k, val, plan.epoch)
    if on_epoch_end:
        on_epoch_end(row)
    bar.update(1)
    bar.set_postfix(phase=plan.phase, loss=f"{row['train_total']:.4g}", recon=f"{row['train_recon']:.4g}")


RESTART_SEED_STEP = 1000  # far from the small seeds a benchmark uses, so restarts of seed s and s + 1 never meet


def _best_of_restarts(cfg: Config, dataset: str | Path | Dataset, run_dir: Path, **kwargs: Any) -> TrainResult:
    """``train.restarts`` independent runs; the one with the lowest final training loss becomes ``run_dir``.
    A kill leaves the candidates resumable (``resume`` continues each); a run stopped early returns unselected."""
    ds = open_dataset(dataset)
    _check_run_dir(run_dir, ds, kwargs["resume"], kwargs["overwrite"])
    if kwargs["resume"] and (run_dir / CONFIG).exists():
        _refuse_changed_settings(run_dir, cfg)
    is_main = distributed_setup().is_main
    if is_main:  # first, so that `--resume` alone finds the settings of a killed run
        if kwargs["overwrite"]:
            shutil.rmtree(run_dir / RESTARTS_DIR, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
    n_epochs = len(schedule(cfg))
    candidates: list[dict[str, Any]] = []
    best: TrainResult | None = None
    for r in range(cfg.train.restarts):
        sub = copy.deepcopy(cfg)
        sub.train.restarts, sub.train.seed = 1, cfg.train.seed + RESTART_SEED_STEP * r
        if kwargs["progress"]:
            tqdm.write(f"restart {r + 1} of {cfg.train.restarts}: train.seed = {sub.train.seed}")
        res = train(sub, ds, run_dir / RESTARTS_DIR / f"seed-{sub.train.seed}", **kwargs)
        if len(res.history) < n_epochs:
            return res
        loss = float(res.history[-1]["train_total"])
        if not candidates or loss < min(c["final_train_loss"] for c in candidates):
            best, chosen_seed = res, sub.train.seed
        candidates.append({"seed": sub.train.seed, "final_train_loss": loss,
                           "run": str(res.run_dir.relative_to(run_dir))})
    assert best is not None
    if is_main:
        for name in (WEIGHTS, CHECKPOINT, HISTORY, INIT_CLUSTERS, DATASET_NOTE, TRAINING_ROWS):
            if (best.run_dir / name).exists():
                atomic_write_bytes(run_dir / name, (best.run_dir / name).read_bytes())
        note = {"criterion": "lowest mean training loss in the last epoch", "chosen_seed": chosen_seed,
                "candidates": candidates}
        atomic_write_bytes(run_dir / RESTARTS_NOTE, (json.dumps(note, indent=2) + "\n").encode())
        if kwargs["progress"]:
            tqdm.write(f"kept train.seed = {chosen_seed}: final training loss "
                       + ", ".join(f"{c['final_train_loss']:.4g} (seed {c['seed']})" for c in candidates))
    return TrainResult(best.net, best.history, run_dir)


# Settings that change where or how fast a run computes, not what it computes: a resumed run may change them.
RUNTIME_KEYS = ("train.device", "train.bf16", "train.channels_last", "train.compile", "train.max_resident_gb",
                "train.tensorboard")


def _refuse_changed_settings(run_dir: Path, cfg: Config) -> None:
    changed = _changed_settings(load_config(run_dir), cfg)
    if changed:
        raise InputError(f"{run_dir}: cannot resume with settings that differ from the run's {CONFIG} "
                         f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}): that would be "
                         f"another run; resume with the run's own config (`--resume` alone) or train into a "
                         "new run directory")


def _changed_settings(saved: Config, cfg: Config) -> list[str]:
    """The ``section.key`` settings in which ``cfg`` differs from a run's saved config, runtime keys aside."""
    a, b = saved.to_dict(), cfg.to_dict()
    return [f"{sec}.{key}" for sec in a for key in a[sec]
            if a[sec][key] != b[sec][key] and f"{sec}.{key}" not in RUNTIME_KEYS]


def _check_run_dir(run_dir: Path, ds: Dataset, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a run into a dataset, or to replace or continue another run without being asked."""
    if run_dir.resolve() == Path(ds.path).resolve() or is_dataset(run_dir):
        raise InputError(f"{run_dir}: is a dataset directory; give training its own run directory")
    held = [name for name in (CHECKPOINT, WEIGHTS, CONFIG) if (run_dir / name).exists()]
    if not held or (resume and ((run_dir / CHECKPOINT).exists() or (run_dir / RESTARTS_DIR).is_dir())):
        return
    if resume:
        raise FileExistsError(f"{run_dir}: holds {', '.join(held)} but no {CHECKPOINT} to resume from; choose a "
                              "new run directory, or pass --overwrite to train a new run there")
    if not overwrite:
        raise FileExistsError(f"{run_dir}: already holds a run ({', '.join(held)}); pass --resume to continue it, "
                              "--overwrite to replace it, or choose a new run directory")
    for name in (CHECKPOINT, WEIGHTS, CONFIG, HISTORY, INIT_CLUSTERS, RESTARTS_NOTE, TRAINING_ROWS):
        (run_dir / name).unlink(missing_ok=True)


def _make_step(net: AstroVaDErNet, opt: torch.optim.Optimizer, cfg: Config, device: torch.device,
               dist_info: DistInfo = SINGLE_PROCESS) -> Callable[[torch.Tensor, EpochPlan, torch.Generator],
                                                              torch.Tensor]:
    lo, t = cfg.loss, cfg.train
    use_bf16 = training_bf16(cfg, device)
    forward = net.forward
    if t.compile and device.type == "cuda":
        try:
            forward = torch.compile(net.forward)
        except Exception:  # pragma: no cover - compile is an optional speed-up
            forward = net.forward
    params = [p for group in opt.param_groups for p in group["params"]]  # the trained ones (train.learn_weights)
    shard = (dist_info.rank, dist_info.world)
    J = cfg.model.latent_dim

    def step(x: torch.Tensor, plan: EpochPlan, g: torch.Generator, labels: torch.Tensor | None = None,
             neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """One optimiser step on this rank's slice ``x`` of a global batch; returns loss sums and count.
        ``labels`` (alignment phase) are the images' initial clusters, used as q(c|x) in the GMM KL;
        ``neighbours`` (scan phase) one latent-space neighbour of each image, whose q(c|x) it should share."""
        gmm_phase = plan.phase != "gamma"
        n_global = x.shape[0] * dist_info.world
        # Random numbers are drawn for the whole global batch (same generator state on every rank) and
        # sliced, so the result does not depend on how many ranks share the batch.
        x = augment(x, g, t, shard)
        views = torch.cat([contrastive_view(x, g, t, shard), contrastive_view(x, g, t, shard)]) if lo.contrastive \
            else None
        sample = gmm_phase or not t.decode_mean_in_gamma
        eps = shard_slice(torch.randn(n_global, J, device=device, generator=g), shard) if sample else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = forward(x, sample=sample, eps=eps)
            view_mu = net.encode(views)[0] if views is not None else None
        resp = F.one_hot(labels, cfg.model.n_components).float() if labels is not None else None
        terms = vade_losses(net, x, out, lo, gmm_phase, resp)
        per_sample = (terms["recon"] + plan.kl_unit_weight * terms["kl_unit"]
                      + plan.kl_gmm_weight * terms["kl_gmm"])
        # The decoder still reconstructs the un-augmented image; only the encoder sees the views. Negatives are
        # the other images of this rank's slice of the batch.
        contrast = torch.zeros_like(per_sample) if view_mu is None else \
            nt_xent(view_mu[:len(x)], view_mu[len(x):], lo.contrastive_temperature, lo.contrastive_similarity)
        per_sample = per_sample + lo.contrastive * contrast
        if labels is not None and t.align_ce_weight > 0:
            # The KL only pulls z towards its label's component; this also makes the label the prior's most
            # probable component for mu, which is what predictions use (MNIST: posterior/label agreement
            # 0.925 -> 0.944, and 0.03 -> 0.01 accuracy lost between the labels and the aligned model).
            logits = net.gmm.log_joint(out["mu"].float())
            per_sample = per_sample + t.align_ce_weight * F.cross_entropy(logits, labels, reduction="none")
        loss = per_sample.mean()
        scan = scan_loss(net, out["mu"].float(), augment(neighbours, g, t, shard), lo) if neighbours is not None \
            else torch.zeros((), device=device)
        loss = loss + lo.scan * scan
        if lo.l2 > 0:
            loss = loss + lo.l2 * net.l2_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist_info.world > 1:
            grads = [p.grad for p in params if p.grad is not None]
            flat = torch.cat([gr.reshape(-1) for gr in grads])
            all_reduce_(flat, dist_info).div_(dist_info.world)
            offset = 0
            for gr in grads:
                gr.copy_(flat[offset:offset + gr.numel()].view_as(gr))
                offset += gr.numel()
        if gmm_phase and t.clip_value > 0:
            torch.nn.utils.clip_grad_value_(params, t.clip_value)
        opt.step()
        with torch.no_grad():
            n = x.shape[0]
            return torch.stack([loss.detach().double() * n, terms["recon"].detach().double().sum(),
                                terms["kl_unit"].detach().double().sum(), terms["kl_gmm"].detach().double().sum(),
                                contrast.detach().double().sum(), scan.detach().double() * n,
                                torch.tensor(float(n), dtype=torch.float64, device=device)])

    return step


@torch.no_grad()
def evaluate(net: AstroVaDErNet, feeder: BatchFeeder | None, cfg: Config, plan: EpochPlan,
             device: torch.device, batch_size: int = 512, dist_info: DistInfo = SINGLE_PROCESS) -> list[float] | None:
    """Mean validation loss terms with z = mu (deterministic), weighted as in the epoch's phase.
    Each rank evaluates its share of the validation rows; the sums are combined."""
    net.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    batches = feeder.batches(batch_size, g, shuffle=False, drop_last=False) if feeder is not None else ()
    for xb in batches:
        x = to_float(xb, training_channels_last(cfg, device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_bf16(cfg, device)):
            out = net(x, sample=False)
        terms = vade_losses(net, x, out, cfg.loss, gmm_phase=plan.phase != "gamma")
        total = terms["recon"] + plan.kl_unit_weight * terms["kl_unit"] + plan.kl_gmm_weight * terms["kl_gmm"]
        sums += torch.stack([total.double().sum(), terms["recon"].double().sum(),
                             terms["kl_unit"].double().sum(), terms["kl_gmm"].double().sum(),
                             torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
    all_reduce_(sums, dist_info)
    if sums[4] == 0:
        return None
    return (sums[:4] / sums[4]).tolist()


def _tensorboard(run_dir: Path):  # pragma: no cover - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        import warnings

        warnings.warn("train.tensorboard = true but the tensorboard package is not installed "
                      "(pip install 'astrovader[tensorboard]'); continuing without it", stacklevel=2)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
