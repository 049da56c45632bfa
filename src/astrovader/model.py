"""The AstroVaDEr network: convolutional encoder/decoder, Gaussian-mixture prior, and the VaDE losses.

Shapes: images ``x`` are float (B, C, H, W) in [0, 1]; latent means/log-variances (B, J); the prior has
K components with weights ``pi`` (K,), means (K, J) and diagonal variances (K, J).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from astrovader.config import CONTRASTIVE_SIMILARITIES, Config, LossConfig, ModelConfig
from astrovader.errors import InputError

LOG_2PI = math.log(2 * math.pi)
# floor of the calibrated decoder variance: (1/1000 of the [0, 1] range)^2, so a perfect batch cannot divide by 0
CALIBRATED_MIN_VARIANCE = 1e-6


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=1, padding=k // 2)  # "same" padding for odd kernels


class ResidualBlock(nn.Module):
    """(conv, LeakyReLU, conv, LeakyReLU) with the input, projected by a 1x1 conv where the number of channels
    changes, added before the second activation (a ResNet basic block, He et al. 2016)."""

    def __init__(self, cin: int, cout: int, k: int, slope: float):
        super().__init__()
        self.conv1, self.conv2 = _conv(cin, cout, k), _conv(cout, cout, k)
        self.act = nn.LeakyReLU(slope)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.skip(x))


def _block(cin: int, cout: int, k: int, slope: float, residual: bool) -> list[nn.Module]:
    """One (conv, LeakyReLU, conv, LeakyReLU) block: flat layers (the weight names of every model trained
    before residual blocks existed) or one :class:`ResidualBlock`."""
    if residual:
        return [ResidualBlock(cin, cout, k, slope)]
    return [_conv(cin, cout, k), nn.LeakyReLU(slope), _conv(cout, cout, k), nn.LeakyReLU(slope)]


class Encoder(nn.Module):
    """Blocks of (conv, LeakyReLU, conv, LeakyReLU, 2x2 max-pool), then two linear heads: mu, log-var.

    With ``group_pooling`` "c4" (or "d4") the last feature map is averaged over the image's 4 quarter turns (and
    their mirror images) before the heads, so the latents are exactly the same for every turned (or mirrored)
    copy of a galaxy: invariance by construction instead of by augmentation, at 4x (8x) the encoder's cost."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        cin = cfg.channels
        for f, k in zip(cfg.encoder_filters, cfg.encoder_kernels, strict=True):
            layers += [*_block(cin, f, k, cfg.leaky_slope, cfg.residual), nn.MaxPool2d(2)]
            cin = f
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.encoder_filters)
        flat = cin * side * side
        self.mu = nn.Linear(flat, cfg.latent_dim)
        self.logvar = nn.Linear(flat, cfg.latent_dim)
        self.group_pooling = cfg.group_pooling

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.group_pooling == "none":
            h = self.features(x).flatten(1)
        else:
            orbit = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
            if self.group_pooling == "d4":
                orbit += [o.flip(-1) for o in orbit]
            h = self.features(torch.cat(orbit)).flatten(1).view(len(orbit), len(x), -1).mean(0)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """Linear + LeakyReLU to the encoder's last feature map, blocks of (conv, LeakyReLU, conv, LeakyReLU,
    bilinear 2x up-sample), then one output conv with ReLU (MSE) or sigmoid (BCE). With ``upsample_first``
    each block up-samples before its convolutions, so they work at the finer scale (the paper's section 6)."""

    def __init__(self, cfg: ModelConfig, bce: bool = False):
        super().__init__()
        self.side = cfg.image_size // 2 ** len(cfg.decoder_filters)
        self.start_channels = cfg.encoder_filters[-1]
        self.fc = nn.Linear(cfg.latent_dim, self.start_channels * self.side * self.side)
        self.act = nn.LeakyReLU(cfg.leaky_slope)
        layers: list[nn.Module] = []
        cin = self.start_channels
        for f, k in zip(cfg.decoder_filters, cfg.decoder_kernels, strict=True):
            up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            block = _block(cin, f, k, cfg.leaky_slope, cfg.residual)
            layers += [up, *block] if cfg.upsample_first else [*block, up]
            cin = f
        layers.append(_conv(cin, cfg.channels, cfg.output_kernel))
        self.features = nn.Sequential(*layers)
        self.bce = bce

    def forward(self, z: Tensor) -> Tensor:
        h = self.act(self.fc(z)).view(-1, self.start_channels, self.side, self.side)
        out = self.features(h)
        # With BCE the decoder returns logits; `reconstruct` applies the sigmoid.
        return out if self.bce else F.relu(out)


class GMMPrior(nn.Module):
    """Mixture prior p(c) p(z|c). Weights are a softmax of logits and variances exp(log-variances), so
    they stay normalised and positive whatever the optimiser does (a known failure of raw parameters).

    ``covariance="diag"`` is VaDE's (and the paper's) diagonal prior. ``"full"`` adds a strictly lower
    triangular part to the Cholesky factor, L = diag(exp(log_vars / 2)) + tril(off_diag, -1), for latent
    spaces whose clusters are correlated across dimensions; with off_diag = 0 it is the diagonal prior."""

    def __init__(self, n_components: int, latent_dim: int, covariance: str = "diag"):
        super().__init__()
        if covariance not in ("diag", "full"):
            raise InputError(f"covariance must be 'diag' or 'full', got {covariance!r}")
        self.covariance = covariance
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(n_components, latent_dim))
        if covariance == "full":
            self.off_diag = nn.Parameter(torch.zeros(n_components, latent_dim, latent_dim))

    @property
    def weights(self) -> Tensor:
        return torch.softmax(self.logits, 0)

    @property
    def variances(self) -> Tensor:
        """Per-dimension variances (the diagonal of each component's covariance), shape (K, J)."""
        if self.covariance == "diag":
            return self.log_vars.exp()
        return self.scale_tril.pow(2).sum(-1)

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factors L of the component covariances (Sigma = L L^T), shape (K, J, J)."""
        diag = torch.diag_embed((0.5 * self.log_vars).exp())
        return diag if self.covariance == "diag" else diag + torch.tril(self.off_diag, -1)

    def n_parameters(self) -> int:
        K, J = self.means.shape
        return K + K * J + (K * J if self.covariance == "diag" else K * J * (J + 1) // 2)

    def log_joint(self, mu: Tensor) -> Tensor:
        """log pi_c + log N(mu; mu_c, Sigma_c), shape (B, K), computed in float32 or better."""
        mu = _at_least_f32(mu)
        lv = self.log_vars.to(mu.dtype)
        diff = mu[:, None, :] - self.means.to(mu.dtype)[None]
        if self.covariance == "diag":
            log_n = -0.5 * (LOG_2PI + lv + diff.pow(2) / lv.exp()).sum(-1)
        else:
            J = mu.shape[1]
            maha = _mahalanobis(self.scale_tril.to(mu.dtype), diff)
            log_n = -0.5 * (J * LOG_2PI + lv.sum(-1)[None] + maha)
        return torch.log_softmax(self.logits.to(mu.dtype), 0)[None] + log_n

    def posterior(self, mu: Tensor) -> Tensor:
        """Exact q(c|x): a stable softmax of the log joint. Used for reported probabilities."""
        return torch.softmax(self.log_joint(mu), dim=1)

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Copy in a fitted mixture: ``covariances`` are (K, J) variances or (K, J, J) matrices."""
        self.logits.copy_(weights.clamp_min(1e-12).log())
        self.means.copy_(means)
        if covariances.ndim == 3:
            L = torch.linalg.cholesky(covariances)
            self.log_vars.copy_(2 * torch.diagonal(L, dim1=-2, dim2=-1).clamp_min(1e-12).log())
            if self.covariance == "full":
                self.off_diag.copy_(torch.tril(L, -1))
        else:
            self.log_vars.copy_(covariances.clamp_min(1e-12).log())
            if self.covariance == "full":
                self.off_diag.zero_()


def _tril_inverse(L: Tensor) -> Tensor:
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    return torch.linalg.solve_triangular(L, eye, upper=False)


def _mahalanobis(L: Tensor, diff: Tensor, L_inv: Tensor | None = None) -> Tensor:
    """Squared Mahalanobis distances |L_c^-1 diff_bc|^2 for diff (B, K, J) and factors L (K, J, J).
    One (K, J, J) inverse and a batched product: much faster than B x K triangular solves."""
    L_inv = _tril_inverse(L) if L_inv is None else L_inv
    return torch.einsum("kij,bkj->bki", L_inv, diff).pow(2).sum(-1)


def minmax_responsibilities(log_joint: Tensor, scale: float = 50.0) -> Tensor:
    """s3VDC's inverse min-max responsibilities: l = -log joint is min-max scaled over the whole
    (B, K) matrix to [0, 1], multiplied by -scale and soft-maxed over clusters. Bounded logits mean
    resp never underflows to an exact 0 that would make log(resp) or the loss NaN."""
    neg = -log_joint
    lo, hi = neg.min(), neg.max()
    scaled = (neg - lo) / (hi - lo).clamp_min(torch.finfo(neg.dtype).tiny)
    return torch.softmax(-scale * scaled, dim=1)


def kl_unit(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def kl_gmm(mu: Tensor, logvar: Tensor, resp: Tensor, weights: Tensor, means: Tensor,
           variances: Tensor) -> Tensor:
    """Exact KL( q(z|x) q(c|x) || p(z|c) p(c) ) per sample, with q(c|x) = resp (VaDE, Jiang et al. 2016).

    Without the constant J/2 log(2 pi) that the s3VDC/AstroVaDEr code adds (it changes no gradient)."""
    log_w = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
    term_entropy = -0.5 * (1 + logvar).sum(1)
    term_cat = (torch.special.xlogy(resp, resp) - resp * log_w[None]).sum(1)
    quad = (logvar.exp()[:, None, :] + (mu[:, None, :] - means[None]).pow(2)) / variances[None]
    term_gauss = 0.5 * (resp * (variances.log()[None] + quad).sum(-1)).sum(1)
    return term_entropy + term_cat + term_gauss


def kl_gmm_full(mu: Tensor, logvar: Tensor, resp: Tensor, weights: Tensor, means: Tensor,
                scale_tril: Tensor) -> Tensor:
    """The same KL for full component covariances Sigma_c = L_c L_c^T: the Gaussian term becomes
    1/2 sum_c gamma_c (log|Sigma_c| + tr(Sigma_c^-1 diag(exp(logvar))) + (mu - mu_c)^T Sigma_c^-1 (mu - mu_c))."""
    log_w = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
    term_entropy = -0.5 * (1 + logvar).sum(1)
    term_cat = (torch.special.xlogy(resp, resp) - resp * log_w[None]).sum(1)
    L_inv = _tril_inverse(scale_tril)
    precision_diag = L_inv.pow(2).sum(-2)  # diag of Sigma^-1 = L^-T L^-1: column sums of squares
    logdet = 2 * torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    trace = logvar.exp() @ precision_diag.T  # (B, K)
    maha = _mahalanobis(scale_tril, mu[:, None, :] - means[None], L_inv)
    term_gauss = 0.5 * (resp * (logdet[None] + trace + maha)).sum(1)
    return term_entropy + term_cat + term_gauss


def nt_xent(a: Tensor, b: Tensor, temperature: float, similarity: str = "cosine") -> Tensor:
    """(B,) NT-Xent (SimCLR's normalised temperature-scaled cross-entropy) of the pairs (a_i, b_i) of latent
    vectors (B, J): each vector must pick its partner out of the other 2B - 2 in the batch, averaged over the two
    directions. ``similarity="cosine"`` is SimCLR's cos(a, b) / temperature; ``"euclidean"`` is
    -|a - b|^2 / temperature, which shapes distances in the latent space itself (where the mixture prior's
    Gaussians live) instead of only directions."""
    z = torch.cat([a, b]).float()
    if similarity == "cosine":
        z = F.normalize(z, dim=1)
        sim = z @ z.T / temperature
    elif similarity == "euclidean":
        sim = -torch.cdist(z, z).pow(2) / temperature
    else:
        raise InputError(f"similarity must be one of {', '.join(CONTRASTIVE_SIMILARITIES)}, got {similarity!r}")
    n = len(a)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    per = F.cross_entropy(sim, target, reduction="none")
    return 0.5 * (per[:n] + per[n:])


def reconstruction_loss(recon: Tensor, x: Tensor, kind: str = "mse") -> Tensor:
    """Per-image reconstruction loss summed over pixels: MSE x D (D = C*H*W), binary cross-entropy (``recon``
    holds logits), or ``calibrated``: the Gaussian negative log-likelihood with the batch's own optimal
    variance sigma^2 = mean squared error (held constant in the gradient), D/2 (SSE / (D sigma^2) + log sigma^2).
    A fixed MSE x D is a Gaussian decoder with sigma^2 = 1/2, far wider than the pixel errors of a trained model,
    so the KL terms dominate; the calibrated decoder (Rybkin, Daniilidis & Levine 2021, "sigma-VAE") lets the
    data set the balance between reconstruction and clustering instead of a hand-picked weight."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(recon, x, reduction="none").flatten(1).sum(1)
    sse = (recon - x).pow(2).flatten(1).sum(1)
    if kind == "calibrated":
        d = recon[0].numel()
        var = (sse.detach().mean() / d).clamp_min(CALIBRATED_MIN_VARIANCE)
        return 0.5 * (sse / var + d * var.log())
    return sse


class AstroVaDErNet(nn.Module):
    """Encoder + decoder + GMM prior. ``forward`` returns everything the losses need."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.model)
        self.decoder = Decoder(cfg.model, bce=cfg.loss.reconstruction == "bce")
        self.gmm = GMMPrior(cfg.model.n_components, cfg.model.latent_dim, cfg.model.covariance)
        for layer in self.modules():
            # Keras defaults (Glorot-uniform weights, zero biases), as in the reference model. PyTorch's
            # default init shrinks the signal through the deep conv stack so much that training stalls.
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def network_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def count_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        gmm = self.gmm.n_parameters()
        return {"encoder": enc, "decoder": dec, "network": enc + dec, "gmm": gmm, "total": enc + dec + gmm}

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x)
        c = self.cfg.loss.logvar_clamp
        return mu, logvar.clamp(-c, c)

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1] (the sigmoid is applied here for BCE models)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.decoder.bce else out

    def forward(self, x: Tensor, sample: bool = True, eps: Tensor | None = None) -> dict[str, Tensor]:
        """``eps`` (standard normal, shape of mu) may be given so that the noise is chosen by the caller,
        e.g. identically across data-parallel ranks."""
        mu, logvar = self.encode(x)
        if sample:
            noise = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
            z = mu + noise * (0.5 * logvar).exp()
        else:
            z = mu
        return {"mu": mu, "logvar": logvar, "z": z, "recon": self.decoder(z)}

    def l2_penalty(self) -> Tensor:
        return sum(p.pow(2).sum() for p in self.network_parameters())  # type: ignore[return-value]


def _at_least_f32(t: Tensor) -> Tensor:
    """Loss maths runs in float32 even under bf16 autocast (float64 inputs stay float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def vade_losses(net: AstroVaDErNet, x: Tensor, out: dict[str, Tensor], loss_cfg: LossConfig,
                gmm_phase: bool, resp: Tensor | None = None) -> dict[str, Tensor]:
    """Per-sample loss terms (float32) for a batch. ``gmm_phase`` selects whether the GMM KL is computed
    (annealing/static phases) or only the unit-Gaussian KL (gamma-training). ``resp`` (B, K) replaces the
    posterior q(c|x) in the GMM KL (the alignment phase feeds the initial clustering's labels)."""
    mu, logvar = _at_least_f32(out["mu"]), _at_least_f32(out["logvar"])
    recon = reconstruction_loss(_at_least_f32(out["recon"]), _at_least_f32(x), loss_cfg.reconstruction)
    terms = {"recon": recon, "kl_unit": kl_unit(mu, logvar)}
    if gmm_phase:
        gmm = net.gmm
        if resp is None:
            resp = minmax_responsibilities(gmm.log_joint(mu), loss_cfg.minmax_scale)
        if gmm.covariance == "diag":
            terms["kl_gmm"] = kl_gmm(mu, logvar, resp, gmm.weights, gmm.means, gmm.variances)
        else:
            terms["kl_gmm"] = kl_gmm_full(mu, logvar, resp, gmm.weights, gmm.means, gmm.scale_tril)
    else:
        terms["kl_gmm"] = torch.zeros_like(recon)
    return terms


def scan_loss(net: AstroVaDErNet, mu: torch.Tensor, neighbours: torch.Tensor, lo: LossConfig) -> torch.Tensor:
    """SCAN's objective on the mixture's posteriors (Van Gansbeke et al. 2020): each galaxy and its neighbour
    should be put in the same component with confidence, -mean log(q(c|x) . q(c|n)), while the batch as a whole
    spreads over the components, minus ``scan_entropy`` x the entropy of the mean q(c|x)."""
    q = net.gmm.posterior(mu)
    qn = net.gmm.posterior(net.encode(neighbours)[0].float())
    consistency = -torch.log((q * qn).sum(1).clamp_min(1e-8)).mean()
    mean_q = q.mean(0)
    entropy = -(mean_q * mean_q.clamp_min(1e-8).log()).sum()
    return consistency - lo.scan_entropy * entropy


def describe_architecture(cfg: Config) -> list[tuple[str, str, int]]:
    """(layer, output shape, parameters) rows for ``astrovader summary``."""
    net = AstroVaDErNet(cfg)
    m = cfg.model
    rows: list[tuple[str, str, int]] = []
    x = torch.zeros(1, m.channels, m.image_size, m.image_size)

    def walk(prefix: str, seq: nn.Sequential, h: Tensor) -> Tensor:
        for i, layer in enumerate(seq):
            h = layer(h)
            n = sum(p.numel() for p in layer.parameters())
            rows.append((f"{prefix}.{i} {type(layer).__name__}", "x".join(map(str, h.shape[1:])), n))
        return h

    with torch.no_grad():
        rows.append(("input", "x".join(map(str, x.shape[1:])), 0))
        h = walk("encoder", net.encoder.features, x).flatten(1)
        rows.append(("encoder.flatten", str(h.shape[1]), 0))
        rows.append(("encoder.mu Linear", str(m.latent_dim), sum(p.numel() for p in net.encoder.mu.parameters())))
        rows.append(("encoder.logvar Linear", str(m.latent_dim),
                     sum(p.numel() for p in net.encoder.logvar.parameters())))
        d = net.decoder
        h = d.act(d.fc(torch.zeros(1, m.latent_dim))).view(1, d.start_channels, d.side, d.side)
        rows.append(("decoder.fc Linear+LeakyReLU", "x".join(map(str, h.shape[1:])),
                     sum(p.numel() for p in d.fc.parameters())))
        walk("decoder", d.features, h)
        rows.append((f"gmm (pi, means, {m.covariance} covariances)", f"K={m.n_components}, J={m.latent_dim}",
                     net.gmm.n_parameters()))
    return rows
