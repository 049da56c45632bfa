"""The s3VDC training schedule as data: every epoch's phase, annealing factor, loss weights and learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from astrovader.config import Config, TrainConfig


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    phase: str  # "gamma", "align", "anneal", "static" or "scan"
    beta: float  # annealing factor, already raised to the power (0 in gamma-training)
    kl_unit_weight: float
    kl_gmm_weight: float
    lr: float


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step-wise exponential decay from ``lr`` that reaches ``lr_min`` exactly at the last epoch."""
    last = cfg.epochs - 1
    if last <= 0:
        return cfg.lr_min
    every = min(cfg.lr_decay_every, last)
    steps = last // every
    frac = min(epoch // every, steps) / steps
    return cfg.lr * (cfg.lr_min / cfg.lr) ** frac


def schedule(cfg: Config) -> list[EpochPlan]:
    t, lo = cfg.train, cfg.loss
    plans = [EpochPlan(e, "gamma", 0.0, lo.gamma, 0.0, learning_rate(t, e)) for e in range(t.gamma_epochs)]
    e = t.gamma_epochs
    for _ in range(t.align_epochs):
        plans.append(EpochPlan(e, "align", 1.0, 0.0, (1.0 + lo.gamma) * lo.gmm_kl_scale, learning_rate(t, e)))
        e += 1
    for _ in range(t.periods):
        for i in range(t.anneal_epochs):
            beta = (i / t.anneal_epochs) ** t.anneal_power
            plans.append(EpochPlan(e, "anneal", beta, 0.0, (beta + lo.gamma) * lo.gmm_kl_scale,
                                   learning_rate(t, e)))
            e += 1
        for _ in range(t.static_epochs):
            plans.append(EpochPlan(e, "static", 1.0, 0.0, (1.0 + lo.gamma) * lo.gmm_kl_scale, learning_rate(t, e)))
            e += 1
    for _ in range(t.scan_epochs):
        plans.append(EpochPlan(e, "scan", 1.0, 0.0, (1.0 + lo.gamma) * lo.gmm_kl_scale, learning_rate(t, e)))
        e += 1
    return plans


