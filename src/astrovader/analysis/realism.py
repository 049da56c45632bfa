"""How realistic a run's synthetic galaxies are, measured against real galaxies the model was not fitted on.

Published generators of galaxy images are judged by distributions, side by side with real galaxies (Lanusse et
al. 2021; Holzschuh et al. 2022; Smith et al. 2022). :func:`realism` draws ``n`` synthetic galaxies from the
mixture prior (exactly as ``astrovader generate`` does) and compares them with ``n`` real galaxies of a held-out
split:

* morphology, measured as ``describe`` measures it (photutils and statmorph on linear flux where the dataset
  records its stretch): per parameter a Wasserstein-1 distance divided by the real galaxies' interquartile
  range, and a KS statistic, each beside the same numbers for two halves of the real galaxies (the floor: what
  sampling alone gives);
* a Frechet distance between the two sets in a space the model did not learn (the first principal components
  of the training stamps), as FID does with Inception features, with its real-vs-real floor;
* a classifier two-sample test: a small CNN trained on half of each set to tell them apart, its accuracy on the
  other half (0.5: indistinguishable);
* memorisation: each synthetic galaxy's distance to its nearest training galaxy (in that feature space) against
  held-out real galaxies' distances to theirs; a synthetic galaxy closer than real galaxies ever are is a copy;
* the decoder's own floor: the same W1 ratio for reconstructions of real galaxies (their decoded latent means,
  with the same noise). A sampler can bring synthetic galaxies no closer to real ones than this: where the
  reconstructions are already far, the decoder, not the sampler, is what to improve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from astrovader.analysis.morphology import measure, psf_image
from astrovader.data.dataset import Dataset
from astrovader.data.noise import SkyNoise
from astrovader.data.stretch import PixelStretch
from astrovader.errors import InputError
from astrovader.model import AstroVaDErNet
from astrovader.sampling import GenerationSpec, gmm_arrays, sample, sample_latents

# compared for every galaxy (photutils, milliseconds) and, for ``n_detailed`` of each set, statmorph's (0.2 s)
CHEAP = ("r50", "r90", "axis_ratio", "surface_brightness", "galaxy_flux")
DETAILED = ("concentration", "asymmetry", "gini", "m20", "sersic_n")
PCA_COMPONENTS = 50
SAMPLERS = ("prior", "posterior")


@dataclass
class RealismResult:
    """What :func:`realism` measured; ``tables`` hold the per-parameter and per-component comparisons."""

    n_real: int
    n_synthetic: int
    split: str
    noise: dict[str, Any] | None  # the sky noise added to the synthetic stamps, or None (noiseless)
    # parameter, w1, w1_floor, w1_ratio, ks, ks_floor, n_real, n_synthetic, w1_ratio_reconstructed
    parameters: pd.DataFrame
    components: pd.DataFrame  # component, n_members, w1_ratio of each cheap parameter (synthetic of k vs members)
    frechet: float
    frechet_floor: float
    classifier_accuracy: float
    memorisation: dict[str, float]
    sampler: str = "prior"
    temperature: float = 1.0  # the latent draws' spread, as generate --temperature
    linear: bool = True  # measured on linear flux (the dataset records its stretch); False: on the stored pixels
    measurements: dict[str, pd.DataFrame] = field(repr=False, default_factory=dict)
    nearest: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def measured_on(self) -> str:
        """What the morphology was measured on, in words."""
        return "linear flux" if self.linear else "the stored pixels (the dataset records no stretch)"

    def as_dict(self) -> dict[str, Any]:
        return {"n_real": self.n_real, "n_synthetic": self.n_synthetic, "split": self.split, "noise": self.noise,
                "parameters": self.parameters.to_dict("records"), "components": self.components.to_dict("records"),
                "frechet": self.frechet, "frechet_floor": self.frechet_floor,
                "classifier_accuracy": self.classifier_accuracy, "memorisation": self.memorisation,
                "sampler": self.sampler, "temperature": self.temperature,
                "linear_flux": self.linear}


def _iqr(x: np.ndarray) -> float:
    q1, q3 = np.nanpercentile(x, [25, 75])
    return float(q3 - q1) if q3 > q1 else float(np.nanstd(x)) or 1.0


def compare(real: np.ndarray, synthetic: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """W1 / IQR and KS of ``synthetic`` against ``reference`` (real galaxies), and of ``real`` (another set of
    real galaxies of the same size as ``synthetic``) against it: the floor."""
    from scipy.stats import ks_2samp, wasserstein_distance

    ref = reference[np.isfinite(reference)]
    # W1 follows the tails: a few failed fits (Sersic n at its bound of 30+) would decide it, so every set is
    # clipped to the reference's 1st-99th percentile range first (KS, a rank statistic, is unaffected)
    lo, hi = np.percentile(ref, [1, 99]) if len(ref) else (0.0, 0.0)
    ref = np.clip(ref, lo, hi)
    out: dict[str, float] = {}
    for name, x in (("", synthetic), ("_floor", real)):
        x = np.clip(x[np.isfinite(x)], lo, hi)
        ok = len(x) >= 5 and len(ref) >= 5
        out[f"w1{name}"] = wasserstein_distance(x, ref) / _iqr(ref) if ok else np.nan
        out[f"ks{name}"] = float(ks_2samp(x, ref).statistic) if ok else np.nan
    out["w1_ratio"] = out["w1"] / out["w1_floor"] if out["w1_floor"] > 0 else np.nan
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` (N, D)."""
    from scipy.linalg import sqrtm

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))


def two_sample_accuracy(real: np.ndarray, synthetic: np.ndarray, seed: int = 0, epochs: int = 8) -> float:
    """Held-out accuracy of a small CNN trained to tell ``synthetic`` from ``real`` uint8 stamps (N, C, H, W),
    each set split in half for training and testing. 0.5 means it cannot tell them apart."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.concatenate([real, synthetic])).float() / 255
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(synthetic))])
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    half = len(x) // 2
    torch.manual_seed(seed)
    c = x.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(c, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(half, generator=g)
        for s in range(0, half, 64):
            idx = order[s:s + 64]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = (net(x[half:]).squeeze(1) > 0).float()
    return float((pred == y[half:]).float().mean())


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255


def memorisation(train: np.ndarray, real: np.ndarray, synthetic: np.ndarray) -> tuple[dict[str, float],
                                                                                    np.ndarray, np.ndarray]:
    """Nearest training galaxy of every held-out real and every synthetic galaxy, by distance between feature
    vectors (N, D): the share of synthetic galaxies closer to a training galaxy than the 1st percentile of the real
    galaxies' distances (a copy is closer to its original than real galaxies ever are to each other), the medians,
    and (distances, indices) of the synthetic galaxies' nearest training galaxies.

    Features, not pixels: a noiseless synthetic stamp is closer in pixels to every noisy stamp than two noisy
    stamps are to each other, which would flag every synthetic galaxy; the leading principal components of the
    training stamps keep the galaxies and little of the noise."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(train)
    d_real = index.kneighbors(real)[0][:, 0]
    d_syn, i_syn = (a[:, 0] for a in index.kneighbors(synthetic))
    p1 = float(np.percentile(d_real, 1))
    return ({"real_p1": p1, "real_median": float(np.median(d_real)), "synthetic_median": float(np.median(d_syn)),
             "share_closer_than_real_p1": float((d_syn < p1).mean())}, d_syn, i_syn)


def posterior_sample(net: AstroVaDErNet, train: np.ndarray, n: int, *, temperature: float = 1.0, seed: int = 0,
                     noise: SkyNoise | None = None, per_component: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic stamps drawn where the data are: the training stamps ``train`` are encoded, and each
    component's members' latent means get a full-covariance Gaussian mixture of up to ``per_component`` parts
    (the aggregate posterior); components are drawn by the prior's weights, z from the member density (its
    covariances scaled by ``temperature``) and decoded. Returns (uint8 stamps, components)."""
    from sklearn.mixture import GaussianMixture

    from astrovader.inference import FastDecoder, infer

    pred = infer(net, train, reconstruct=False)
    rng = np.random.default_rng([seed, 3])
    weights = net.gmm.weights.detach().double().cpu().numpy()
    comps = rng.choice(len(weights), n, p=weights / weights.sum())
    z = np.zeros((n, pred.mu.shape[1]), np.float32)
    for k in np.unique(comps):
        members = pred.mu[pred.labels == k].astype(np.float64)
        draw = comps == k
        if len(members) < 10:  # too few members for a density: the prior's Gaussian
            spec = GenerationSpec(components=(int(k),), temperature=temperature, seed=seed)
            z[draw] = sample_latents(gmm_arrays(net), 0, int(draw.sum()), spec)[1]
            continue
        gm = GaussianMixture(min(per_component, len(members) // 25 or 1), covariance_type="full",
                             reg_covar=1e-4, random_state=seed).fit(members)
        part = rng.choice(gm.n_components, int(draw.sum()), p=gm.weights_)
        eps = rng.standard_normal((int(draw.sum()), members.shape[1]))
        chol = np.linalg.cholesky(gm.covariances_)
        z[draw] = gm.means_[part] + np.sqrt(temperature) * np.einsum("nij,nj->ni", chol[part], eps)
    images = FastDecoder(net)(z)
    if noise is not None:
        images = noise.add(images, noise.field(np.random.default_rng([seed, 4]), images.shape))
    return images, comps.astype(np.int16)


def _reconstructed(net: AstroVaDErNet, images: np.ndarray, noise: SkyNoise | None,
                   rng: np.random.Generator) -> np.ndarray:
    """Real galaxies passed through the encoder and decoder (their decoded latent means) as uint8 stamps, with the
    same sky noise as the synthetic ones: what the decoder makes of galaxies it is shown, the best any sampler of
    its latent space can do."""
    from astrovader.inference import reconstruct

    out = np.clip(np.rint(reconstruct(net, images) * 255.0), 0, 255).astype(np.uint8)
    return out if noise is None else noise.add(out, noise.field(rng, out.shape))


def _measure(images: np.ndarray, n_detailed: int, stretch: PixelStretch | None, psf: np.ndarray | None,
             rng: np.random.Generator) -> pd.DataFrame:
    detailed = np.zeros(len(images), bool)
    detailed[rng.choice(len(images), min(n_detailed, len(images)), replace=False)] = True
    m = measure(images, detailed=detailed, stretch=stretch, psf=psf)
    # statmorph's flag 2+ marks measurements it does not trust (its Sersic fits then sit at their bounds)
    m.loc[~(m["statmorph_flag"] <= 1), list(DETAILED)] = np.nan
    return m


def _per_component(m_real: pd.DataFrame, m_syn: pd.DataFrame, real_labels: np.ndarray, comps: np.ndarray,
                   n_components: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Synthetic galaxies drawn from component k against the real galaxies the model assigns to k: each cheap
    parameter's W1 ratio, the floor from two halves of those members."""
    rows = []
    for k in range(n_components):
        members, drawn = real_labels == k, comps == k
        row: dict[str, Any] = {"component": k, "n_members": int(members.sum()), "n_synthetic": int(drawn.sum())}
        for p in CHEAP:
            real_k, syn_k = m_real[p].to_numpy(float)[members], m_syn[p].to_numpy(float)[drawn]
            if len(real_k) >= 10 and len(syn_k) >= 5:
                h = rng.permutation(len(real_k))
                row[f"{p}_w1_ratio"] = compare(real_k[h[: len(h) // 2]], syn_k, real_k[h[len(h) // 2:]])["w1_ratio"]
            else:
                row[f"{p}_w1_ratio"] = np.nan
        rows.append(row)
    return rows


def realism(net: AstroVaDErNet, ds: Dataset, *, n: int = 1000, split: str = "test", train_split: str = "train",
            n_detailed: int = 100, n_train: int = 5000, temperature: float = 1.0, seed: int = 0,
            noise: SkyNoise | None = None, sampler: str = "prior", log=None) -> RealismResult:
    """Measure synthetic galaxies against real galaxies the model was not fitted on.

    See the module docstring for the measurements: morphology distributions beside their real-vs-real floor, a
    Frechet distance in PCA features of real stamps, a two-sample CNN and memorisation.

    Parameters
    ----------
    net : AstroVaDErNet
        The trained network.
    ds : Dataset
        The real galaxies, with a ``split`` column.
    n : int, default 1000
        Synthetic galaxies, and at most as many real ones.
    split : str, default "test"
        The real galaxies' split.
    train_split : str, default "train"
        The training rows (memorisation and the feature space).
    n_detailed : int, default 100
        Galaxies of each set measured with statmorph.
    n_train : int, default 5000
        At most this many training rows.
    temperature : float, default 1.0
        Scale of the latent draws' spread.
    seed : int, default 0
        Random seed.
    noise : SkyNoise, optional
        Survey sky noise added to the synthetic stamps, as ``generate --noise``.
    sampler : {"prior", "posterior"}, default "prior"
        Each component's prior Gaussian (as ``generate``) or a density fitted to its encoded training members.
    log : callable, optional
        Receives progress messages.

    Returns
    -------
    RealismResult
        Every measurement, overall and per component.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    from sklearn.decomposition import PCA

    from astrovader.inference import infer

    log = log or (lambda message: None)
    rng = np.random.default_rng(seed)
    rows = ds.split_indices(split)
    train_rows = ds.split_indices(train_split)
    if len(rows) < 20 or len(train_rows) < 20:
        raise InputError(f"{ds.path}: needs at least 20 rows in split {split!r} and in {train_split!r} (found "
                         f"{len(rows)} and {len(train_rows)}); run `astrovader split` on the dataset")
    rows = np.sort(rng.choice(rows, min(n, len(rows)), replace=False))
    train_rows = np.sort(rng.choice(train_rows, min(n_train, len(train_rows)), replace=False))
    real, train = ds.take(rows), ds.take(train_rows)
    log(f"drawing {len(rows):,} synthetic galaxies ({sampler})")
    if sampler == "prior":
        synthetic, comps, _ = sample(net, len(rows), GenerationSpec(temperature=temperature, seed=seed, noise=noise))
    else:
        synthetic, comps = posterior_sample(net, train, len(rows), temperature=temperature, seed=seed, noise=noise)
    real_labels = infer(net, real, reconstruct=False).labels
    stretch, psf = PixelStretch.from_meta(ds.meta), psf_image(ds.meta)
    log(f"measuring morphology of {2 * len(rows):,} galaxies ({2 * min(n_detailed, len(rows))} with statmorph)")
    m_real = _measure(real, n_detailed, stretch, psf, rng)
    m_syn = _measure(synthetic, n_detailed, stretch, psf, rng)
    half = rng.permutation(len(rows))
    a, b = half[: len(rows) // 2], half[len(rows) // 2:]
    syn_a = rng.choice(len(rows), len(a), replace=False)
    params = []
    for p in CHEAP + DETAILED:
        row = compare(m_real[p].to_numpy(float)[a], m_syn[p].to_numpy(float)[syn_a], m_real[p].to_numpy(float)[b])
        params.append({"parameter": p, **row, "n_real": int(m_real[p].notna().sum()),
                       "n_synthetic": int(m_syn[p].notna().sum())})
    comp_rows = _per_component(m_real, m_syn, real_labels, comps, net.cfg.model.n_components, rng)
    log(f"reconstructing {len(a):,} of the real galaxies: the decoder's own floor")
    rec_rng = np.random.default_rng([seed, 7])  # its own stream: the numbers above do not move
    m_rec = _measure(_reconstructed(net, real[a], noise, rec_rng), n_detailed // 2, stretch, psf, rec_rng)
    for row in params:
        p = row["parameter"]
        row["w1_ratio_reconstructed"] = compare(m_real[p].to_numpy(float)[a], m_rec[p].to_numpy(float),
                                                m_real[p].to_numpy(float)[b])["w1_ratio"]
    log("Frechet distance, two-sample classifier, memorisation")
    pca = PCA(min(PCA_COMPONENTS, len(train_rows) - 1, train[0].size), random_state=seed).fit(_flat(train))
    f_real, f_syn = pca.transform(_flat(real)), pca.transform(_flat(synthetic))
    mem, d_syn, i_syn = memorisation(pca.transform(_flat(train)), f_real, f_syn)
    closest = np.argsort(d_syn)[:8]
    return RealismResult(
        n_real=len(rows), n_synthetic=len(synthetic), split=split,
        noise=noise.as_dict() if noise is not None else None, parameters=pd.DataFrame(params),
        components=pd.DataFrame(comp_rows), frechet=frechet_distance(f_syn[syn_a], f_real[b]),
        frechet_floor=frechet_distance(f_real[a], f_real[b]),
        classifier_accuracy=two_sample_accuracy(real, synthetic, seed), memorisation=mem, sampler=sampler,
        temperature=temperature, linear=stretch is not None,
        measurements={"real": m_real, "synthetic": m_syn},
        nearest={"synthetic": synthetic[closest], "training": train[i_syn[closest]], "distance": d_syn[closest]})


def format_realism(res: RealismResult) -> str:
    """The result as the text the command prints."""
    sky = (f"with sky noise sigma {res.noise['sigma']:.3g}" if res.noise else "noiseless (the decoder's mean)")
    lines = [f"{res.n_synthetic:,} synthetic galaxies ({sky}; latents from the {res.sampler}, "
             f"temperature {res.temperature:g}) against "
             f"{res.n_real:,} real galaxies of the "
             f"{res.split!r} split; morphology on {res.measured_on}",
             "parameter            W1/IQR  (real-real)  ratio     KS  (real-real)  reconstructions' ratio"]
    for r in res.parameters.itertuples():
        lines.append(f"{r.parameter:<20} {r.w1:7.3f}  {r.w1_floor:10.3f}  {r.w1_ratio:5.2f}  {r.ks:6.3f}  "
                     f"{r.ks_floor:10.3f}  {r.w1_ratio_reconstructed:22.2f}")
    m = res.memorisation
    lines += [f"Frechet distance (PCA of training stamps): {res.frechet:.3g} (real-real {res.frechet_floor:.3g})",
              f"two-sample CNN accuracy on held-out halves: {res.classifier_accuracy:.3f} (0.5: indistinguishable)",
              f"memorisation: {m['share_closer_than_real_p1']:.1%} of synthetic galaxies are closer to a training "
              f"galaxy than the 1st percentile of real galaxies' distances ({m['real_p1']:.3g}, in the principal "
              f"components of the training stamps); median distance synthetic {m['synthetic_median']:.3g}, real "
              f"{m['real_median']:.3g}"]
    return "\n".join(lines)


def plot_parameters(res: RealismResult, out) -> Any:
    """Histograms of every parameter, real (grey) against synthetic (outline), on the same bins."""
    from astrovader.analysis.figures import save_figure, subplots

    names = list(CHEAP + DETAILED)
    fig, axes = subplots(2, 5, figsize=(14, 5.2), layout="constrained")
    for ax, p in zip(axes.ravel(), names, strict=True):
        r = res.measurements["real"][p].to_numpy(float)
        s = res.measurements["synthetic"][p].to_numpy(float)
        r, s = r[np.isfinite(r)], s[np.isfinite(s)]
        if len(r) and len(s):
            bins = np.linspace(*np.nanpercentile(np.concatenate([r, s]), [1, 99]), 30)
            ax.hist(r, bins, color="0.7", density=True, label=f"real ({len(r)})")
            ax.hist(s, bins, histtype="step", color="C3", lw=1.5, density=True, label=f"synthetic ({len(s)})")
        row = res.parameters.set_index("parameter").loc[p]
        ax.set_title(f"{p}: W1/IQR {row.w1:.2f} (real-real {row.w1_floor:.2f})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"Synthetic against real galaxies of the {res.split!r} split (morphology on {res.measured_on})",
                 fontsize=10)
    return save_figure(fig, out)


def plot_nearest(res: RealismResult, out) -> Any:
    """The synthetic galaxies closest to a training image, each above that training image."""
    from astrovader.analysis.figures import display_range, save_figure, show_image, subplots

    syn, train, dist = res.nearest["synthetic"], res.nearest["training"], res.nearest["distance"]
    fig, axes = subplots(2, len(syn), figsize=(1.4 * len(syn), 3.2), squeeze=False, layout="constrained")
    _, vmax = display_range(np.concatenate([syn, train]).astype(np.float32) / 255)
    for i in range(len(syn)):
        show_image(axes[0, i], syn[i].astype(np.float32) / 255, 0.0, vmax)
        show_image(axes[1, i], train[i].astype(np.float32) / 255, 0.0, vmax)
        axes[0, i].set_title(f"d = {dist[i]:.2f}", fontsize=7)
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest\ntraining", fontsize=8)
    fig.suptitle(f"The {len(syn)} synthetic galaxies nearest to a training galaxy (feature distance d; real "
                 f"galaxies' 1st percentile: {res.memorisation['real_p1']:.2f})", fontsize=9)
    return save_figure(fig, out)


def write_realism(res: RealismResult, out_dir, provenance: dict[str, str] | None = None) -> list[Any]:
    """realism.json, parameters.csv, components.csv and the two figures in ``out_dir``; returns the paths."""
    from pathlib import Path

    from astrovader.data.dataset import atomic_write_json
    from astrovader.data.outputs import write_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "realism.json", {**res.as_dict(), "provenance": provenance or {}})
    write_csv(res.parameters, out_dir / "parameters.csv")
    write_csv(res.components, out_dir / "components.csv")
    return [out_dir / "realism.json", out_dir / "parameters.csv", out_dir / "components.csv",
            plot_parameters(res, out_dir / "parameters.png"), plot_nearest(res, out_dir / "nearest.png")]
