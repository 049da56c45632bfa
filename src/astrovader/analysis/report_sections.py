"""The sections of the report page, one function each, in the order the page shows them.

Every section reads the predictions made once for the analysed rows from a :class:`ReportContext` and adds its
introduction, tables and figures to the page; the numbers that belong in ``metrics.json`` go to
``ctx.metrics``. :mod:`astrovader.analysis.report` makes the context and calls the sections.
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis import figures as figs
from astrovader.analysis.describe import MEASURES, DescribeSettings, Description, pixel_scale_of
from astrovader.analysis.explore_figures import generation_figures
from astrovader.analysis.latent_map import latent_map
from astrovader.analysis.metrics import (
    GZ_DEFAULT_CUTS,
    calinski_harabasz,
    clustering_scores,
    gz_vote_classes,
    occupancy_table,
    overlap_matrix,
    secondary_labels,
    simplified_silhouette_samples,
)
from astrovader.analysis.morphology import companions_in
from astrovader.analysis.page import Page, write_report_table
from astrovader.analysis.realism import format_realism, realism, write_realism
from astrovader.data.dataset import Dataset
from astrovader.data.noise import dataset_sky_noise
from astrovader.data.outputs import write_csv
from astrovader.data.stretch import PixelStretch
from astrovader.inference import Predictions, reconstruct
from astrovader.model import AstroVaDErNet
from astrovader.runs import HISTORY, Run, read_history

N_RANDOM_RECON = 10
N_BEST_WORST = 5
N_MEMBERS = 8
MAP_MAX = 20000  # galaxies on the latent map, as on the explorer's by default


def log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[report] {msg}", file=sys.stderr, flush=True)


@dataclass
class ReportContext:
    """What every section reads: the run, the analysed rows and their predictions, and where to write."""

    run: Run
    ds: Dataset
    pred: Predictions
    catalog: pd.DataFrame  # catalogue rows of ``pred.rows``, in that order
    page: Page
    out_dir: Path
    rng: np.random.Generator
    seed: int
    progress: bool
    metrics: dict[str, Any]
    stretch_text: str
    label_col: str | None
    describe: DescribeSettings
    non_morphological: tuple[int, ...] | None  # as given by the user; None: the automatic flags
    desc: Description | None = None
    nm: tuple[int, ...] = field(default_factory=tuple)  # the components treated as non-morphological

    @property
    def net(self) -> AstroVaDErNet:
        return self.run.network

    @property
    def K(self) -> int:
        return self.pred.probs.shape[1]

    @property
    def figs(self) -> Path:
        return self.out_dir / "figures"

    @property
    def tables(self) -> Path:
        return self.out_dir / "tables"

    def images(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float inputs and reconstructions of the objects at positions ``local`` of the prediction arrays."""
        local = np.asarray(local, dtype=np.int64)
        if len(local) == 0:
            shape = (0, self.ds.channels, self.ds.image_size, self.ds.image_size)
            return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        raw = self.ds.take(self.pred.rows[local])
        return raw.astype(np.float32) / 255.0, reconstruct(self.net, raw)


def components(ctx: ReportContext) -> None:
    """0. What each component is: the sentences and the two description tables."""
    desc, page, given = ctx.desc, ctx.page, ctx.non_morphological
    assert desc is not None
    page.section("components", "What each component is",
                 "Each mixture component described by its members, measured with photutils, GalSim and statmorph "
                 + ("on linear flux (the dataset's recorded stretch inverted; Sersic fits convolved with its "
                    "recorded PSF where it has one)" if desc.table.attrs.get("flux") == "linear" else
                    f"on the stored pixels ({ctx.stretch_text}; the dataset records no stretch, so sizes and "
                    "profiles are relative)")
                 + ": sizes, shape, light concentration and second sources in "
                 "the stamp, and the labels where the catalogue has them. Words compare a component with the "
                 "other components of this dataset. <span class='flag'>Flagged</span> components group galaxies "
                 "by companions or orientation rather than shape" + (" (here as given with --non-morphological)."
                                                                   if given is not None else "."))
    page.raw("<ul>" + "".join(
        f"<li><b>Component {int(r.component)}</b>: {html.escape(r.sentence)}"
        + (" <span class='flag'>[not morphological]</span>" if int(r.component) in ctx.nm else "") + "</li>"
        for r in desc.table.itertuples()) + "</ul>")
    csv, _ = write_report_table(desc.table, ctx.tables, "components", "Component descriptions", png=False)
    write_csv(desc.measurements, ctx.tables / "component_galaxies.csv")
    # two tables that each fit the page: who the members are, then how they look
    shape_cols = [c for c in ("r50", "r50_arcsec", "r90", "r90_arcsec", "concentration", "asymmetry", "gini", "m20",
                              "sersic_n", "axis_ratio", "surface_brightness") if c in desc.table.columns]
    who = desc.table.drop(columns=["sentence", "n_measured", *shape_cols])
    s = ctx.describe
    page.table(who, "Component descriptions: members and flags", csv,
               f"The core is the most probable {s.core_fraction:.0%} of the members (10 to {s.n_core}).",
               legend={k: v for k, v in MEASURES.items() if k in who.columns})
    looks = desc.table[["component", "n_measured", *shape_cols]]
    page.table(looks, "Component descriptions: morphology (medians)", csv,
               f"Medians over {s.max_members} random members per component ({s.n_detailed} for the "
               "statmorph columns). Per-galaxy measurements: tables/component_galaxies.csv.",
               legend={k: v for k, v in MEASURES.items() if k in looks.columns})


def reconstructions(ctx: ReportContext) -> None:
    """1. Random, best and worst reconstructions, and the error against the sky noise."""
    pred, m = ctx.pred, ctx.metrics
    log(ctx.progress, "reconstructions")
    ctx.page.section("recon", "Reconstructions",
                     "How faithfully the model re-draws galaxies from its latent space: input, reconstruction (the "
                     "decoded latent mean) and residual (input - reconstruction) for random, best and worst "
                     f"galaxies. Grey levels are {ctx.stretch_text}, divided by 255; inputs and reconstructions "
                     "share one linear scale per figure, residuals a symmetric red (under-predicted) / blue scale. "
                     "Expect smooth, blurred copies: the paper's reconstructions lose spiral arms and knots too.")
    n = len(pred.rows)
    for name, title, local in (
            ("recon_random", "Random galaxies", np.sort(ctx.rng.choice(n, min(N_RANDOM_RECON, n), replace=False))),
            ("recon_best", f"Best {N_BEST_WORST} by reconstruction MSE", np.argsort(pred.recon_mse)[:N_BEST_WORST]),
            ("recon_worst", f"Worst {N_BEST_WORST} by reconstruction MSE",
             np.argsort(pred.recon_mse)[::-1][:N_BEST_WORST])):
        x, r = ctx.images(local)
        caps = [f"MSE {pred.recon_mse[i]:.2e}\ncomp. {pred.labels[i]}" for i in local]
        ctx.page.figure(figs.plot_reconstructions(x, r, ctx.figs / f"{name}.png", title, caps,
                                               pixel_scale_of(ctx.ds)), title)
    ctx.page.raw(f"<p>Mean reconstruction MSE {m['mean_recon_mse']:.4g}, median {m['median_recon_mse']:.4g} "
                 f"(pixels scaled to [0, 1]), {m['recon_mse_over_noise']:.2f} times the sky-noise variance of the "
                 f"stamps' borders ({m['sky_noise_variance']:.3g}): 1 is the noise floor, where only the noise is "
                 "missed.</p>")


def statistics(ctx: ReportContext, cuts: tuple[float, ...]) -> None:
    """2. Occupancy and separation of the components (the paper's Table 2)."""
    pred, m = ctx.pred, ctx.metrics
    log(ctx.progress, "component statistics")
    occ = occupancy_table(pred.probs, cuts, latents=pred.mu)
    m["simplified_silhouette"] = float(simplified_silhouette_samples(pred.mu, pred.labels).mean())
    m["calinski_harabasz"] = calinski_harabasz(pred.mu, pred.labels)
    m["occupied_components"] = int(len(np.unique(pred.labels)))
    ctx.page.section("stats", "Component statistics (Table 2)",
                     "How many galaxies each component holds and how confidently. n_max: galaxies whose most "
                     "probable component it is. n_p&gt;cut: galaxies whose normalised "
                     "probability for the component exceeds the cut (an object may count in several components); "
                     "in the 'all' row, objects with any probability above the cut. silhouette: mean simplified "
                     "silhouette of the members, in latent-mean space.")
    csv, _ = write_report_table(occ, ctx.tables, "cluster_stats", "Component statistics")  # its PNG is for papers
    ctx.page.table(occ, "Component statistics", csv,
                   f"Whole sample: simplified silhouette {m['simplified_silhouette']:.3f}, "
                   f"Calinski-Harabasz index {m['calinski_harabasz']:.4g}. The same table as an image: "
                   "figures/cluster_stats_table.png.")


def overlap(ctx: ReportContext) -> None:
    """3. The overlap matrix (the paper's Figure 5)."""
    pred, K = ctx.pred, ctx.K
    log(ctx.progress, "overlap matrix")
    ov = overlap_matrix(pred.probs, pred.labels)
    ov_df = pd.DataFrame(ov, columns=[f"p_{c}" for c in range(K)])
    ov_df.insert(0, "members_of", list(range(K)))
    write_csv(ov_df, ctx.tables / "overlap.csv")
    ctx.page.section("overlap", "Component overlap (Figure 5)",
                     "Whether the components are distinct or blend into each other. Row c is the mean probability "
                     "vector of the galaxies whose most probable component is c: a diagonal near 1 means confident "
                     "members; large off-diagonal values mean members shared with another component.")
    ctx.page.figure(figs.plot_overlap(ov, ctx.figs / "overlap.png", counts=np.bincount(pred.labels, minlength=K)),
                    "Overlap matrix", "CSV: tables/overlap.csv.")


def members(ctx: ReportContext) -> None:
    """4. The most probable and random members of each component (the paper's Figures 6-7)."""
    pred = ctx.pred
    log(ctx.progress, "members")
    ctx.page.section("members", "Component members (Figures 6-8)",
                     "What the galaxies of each component look like: the most probable members (what the component "
                     "is about) and random members (what it holds). Left: inputs, with the component probability "
                     "in yellow; right: the same galaxies reconstructed. Compare with the descriptions above.")
    top_rows, rand_rows = [], []
    for c in range(ctx.K):
        who = np.flatnonzero(pred.labels == c)
        label = f"{c}\nn={len(who):,}" + ("\nnot morph." if c in ctx.nm else "")
        top = who[np.argsort(-pred.probs[who, c])][:N_MEMBERS]
        rnd = np.sort(ctx.rng.choice(who, min(N_MEMBERS, len(who)), replace=False)) if len(who) else who
        for store, local in ((top_rows, top), (rand_rows, rnd)):
            x, r = ctx.images(local)
            store.append((label, x, r, pred.probs[local, c]))
    scale = pixel_scale_of(ctx.ds)
    ctx.page.figure(figs.plot_members(top_rows, ctx.figs / "members_top.png", "Most probable members of each component",
                                   N_MEMBERS, scale), "Most probable members", "Figure 6 of the paper.")
    ctx.page.figure(figs.plot_members(rand_rows, ctx.figs / "members_random.png", "Random members of each component",
                                   N_MEMBERS, scale), "Random members", "Figure 7 of the paper.")


def secondary(ctx: ReportContext) -> None:
    """Secondary morphological labels of the non-morphological components' members (the paper's Figure 8)."""
    pred, nm = ctx.pred, ctx.nm
    assert ctx.desc is not None
    if not nm or len(nm) >= ctx.K:
        return
    sec = secondary_labels(pred.probs, nm)
    in_nm = np.isin(sec["primary"].to_numpy(), nm)
    kept_note = ""
    if ctx.non_morphological is None and ctx.desc.companion_components:
        # a galaxy of a companion-grouped component is given another label only if its own stamp has a second
        # source: the others are what the component holds besides pairs, and keep it
        cand = np.flatnonzero(np.isin(pred.labels, ctx.desc.companion_components))
        paired = companions_in(ctx.ds.take(pred.rows[cand]), stretch=PixelStretch.from_meta(ctx.ds.meta))
        in_nm[cand[~paired]] = False
        kept_note = (f" Of the {len(cand):,} members of companion-grouped components, the {int(paired.sum()):,} "
                     "with a second source detected in their stamp are relabelled; the others keep their component.")
    sec_df = pd.concat([ctx.catalog[["id"]], sec], axis=1)[in_nm].reset_index(drop=True)
    write_csv(sec_df, ctx.tables / "secondary_labels.csv")
    cross = pd.crosstab(sec_df["primary"], sec_df["secondary"]).reset_index() if len(sec_df) else \
        pd.DataFrame({"primary": list(nm)})
    cross.columns = [str(c) if i == 0 else f"secondary_{c}" for i, c in enumerate(cross.columns)]
    csv, _ = write_report_table(cross, ctx.tables, "secondary_counts", "Secondary morphological labels", png=False)
    ctx.page.table(cross, "Secondary morphological labels", csv,
                   f"Galaxies in non-morphological components {list(nm)} counted by their most probable "
                   "remaining component (probabilities renormalised over the others)." + kept_note
                   + " Per-galaxy labels: tables/secondary_labels.csv.")
    groups = []
    for c in nm:
        sel = np.flatnonzero((sec["primary"].to_numpy() == c) & in_nm)
        for s, cnt in pd.Series(sec["secondary"].to_numpy()[sel]).value_counts().items():
            pick = sel[sec["secondary"].to_numpy()[sel] == s]
            pick = pick[np.argsort(-sec["secondary_prob"].to_numpy()[pick])][:N_MEMBERS]
            groups.append((f"{c} -> {s}\nn={cnt:,}", ctx.images(pick)[0]))
    ctx.page.figure(figs.plot_secondary(groups, ctx.figs / "secondary.png",
                                     "Non-morphological components by secondary morphological label", N_MEMBERS),
                    "Secondary morphological labels", "Rows: primary -> secondary component (Figure 8).")


def latent_space(ctx: ReportContext) -> None:
    """5. The map of the latent means (the explorer's UMAP) and the latent histograms."""
    pred, K = ctx.pred, ctx.K
    n = len(pred.rows)
    log(ctx.progress, f"latent space (UMAP of {min(MAP_MAX, n):,} galaxies)")
    ctx.page.section("latent", "Latent space",
                     "How the galaxies are arranged in the J-dimensional latent space. The map (UMAP, the same as "
                     "the explorer page's) draws neighbours together but distorts distances and sizes: read it for "
                     "which components touch, not for how far apart they are. The histograms show each latent "
                     "variable with the mixture's means as ticks: a variable whose lines differ separates the "
                     "components.")
    sub = np.sort(ctx.rng.choice(n, min(MAP_MAX, n), replace=False))
    if len(sub) >= 5:
        emb = latent_map(pred.mu[sub], ctx.seed)
        ctx.page.figure(figs.plot_latent_map(emb, pred.labels[sub], K, ctx.figs / "latent_map.png",
                                          f"UMAP of latent means ({len(sub):,} galaxies)"),
                        "Map of the latent space", "Coloured by most probable component.")
    ctx.page.figure(figs.plot_latent_histograms(pred.mu, pred.labels, K, ctx.figs / "latent_histograms.png",
                                             ctx.net.gmm.means.detach().cpu().numpy()),
                    "Latent histograms", "Grey: all galaxies; lines: members of each component.")


def labels(ctx: ReportContext, gz_cuts: dict[str, float] | None) -> None:
    """6. Components against the catalogue's labels and Galaxy Zoo votes (the paper's Figures 13-14)."""
    gz = gz_vote_classes(ctx.catalog, gz_cuts)
    if ctx.label_col is None and gz is None:
        return
    log(ctx.progress, "comparison with labels")
    ctx.page.section("labels", "Comparison with labels (Figures 13-14)",
                     "How the unsupervised components line up with labels the model never saw. Counts and "
                     "fractions of each class per component; a component mostly of one class is a clean "
                     "morphological group. The scores are explained in the table at the top.")
    if ctx.label_col is not None:
        _class_labels(ctx, ctx.label_col)
    if gz is not None:
        comp = pd.Series(ctx.pred.labels, name="component")
        for name, cols, fig_title in (("gz_smooth_featured", ["smooth", "featured"], "Smooth vs featured"),
                                      ("gz_edge_on", ["edge_on", "not_edge_on"], "Edge-on vs not edge-on")):
            if not all(c in gz.columns for c in cols):
                continue
            cnt = pd.DataFrame({c: gz[c].groupby(comp).sum() for c in cols}).reindex(range(ctx.K), fill_value=0)
            cnt = cnt.astype(int)
            out_cnt = cnt.reset_index().rename(columns={"index": "component"})
            csv, _ = write_report_table(out_cnt, ctx.tables, name, f"Galaxy Zoo: {fig_title}", png=False)
            ctx.page.table(out_cnt, f"Galaxy Zoo: {fig_title}", csv,
                           "Clean samples from debiased vote fractions (cuts: "
                           + ", ".join(f"{k} {v:g}" for k, v in {**GZ_DEFAULT_CUTS, **(gz_cuts or {})}.items())
                           + ").")
            ctx.page.figure(figs.plot_label_counts(cnt, ctx.figs / f"{name}.png", f"Galaxy Zoo: {fig_title}"),
                            f"Galaxy Zoo: {fig_title}", "Counts per component.")


def _class_labels(ctx: ReportContext, label_col: str) -> None:
    catalog, pred = ctx.catalog, ctx.pred
    lab = catalog[label_col]
    names = None
    if label_col == "true_class" and "class_name" in catalog.columns:
        names = dict(zip(catalog["true_class"], catalog["class_name"], strict=True))
    ok = lab.notna().to_numpy()
    true = lab.to_numpy()[ok]
    counts = pd.crosstab(pd.Series(pred.labels[ok], name="component"),
                         pd.Series([names.get(t, t) if names else t for t in true], name=label_col))
    counts = counts.reindex(range(ctx.K), fill_value=0)
    out_counts = counts.reset_index()
    out_counts.columns = [str(c) for c in out_counts.columns]
    csv, _ = write_report_table(out_counts, ctx.tables, "label_counts", f"Components vs {label_col}", png=False)
    scores = clustering_scores(true.astype(str), pred.labels[ok]) if ok.any() else {}
    ctx.metrics["label_column"] = label_col
    ctx.metrics.update({f"label_{k}": v for k, v in scores.items()})
    ctx.page.table(out_counts, f"Components vs {label_col}", csv,
                   "Accuracy after Hungarian matching {accuracy:.3f}, NMI {nmi:.3f}, ARI {ari:.3f}, purity "
                   "{purity:.3f}.".format(**scores) if scores else "")
    ctx.page.figure(figs.plot_label_counts(counts, ctx.figs / "label_counts.png", f"{label_col} per component"),
                    f"{label_col} per component", "Counts.")
    ctx.page.figure(figs.plot_label_counts(counts, ctx.figs / "label_fractions.png",
                                        f"{label_col} share of each component", normalise=True),
                    f"{label_col} fractions", "Each component's class mix.")


def history(ctx: ReportContext) -> None:
    """7. The loss terms per epoch (the paper's Figure 2), where the run kept its history."""
    if not (ctx.run.path / HISTORY).is_file():
        return
    log(ctx.progress, "training history")
    rows = read_history(ctx.run.path)
    ctx.page.section("history", "Training history (Figure 2)",
                     "The loss terms per epoch (per image, lower is better); solid: training, dashed: validation; "
                     "shading: the s3VDC phases. The GMM term is added during annealing with a growing weight, "
                     "so the total loss rises in each annealing phase by design and falls in the static phase "
                     "after it. Validation losses are computed without the random sampling and flips of "
                     "training, so they can sit below the training losses.")
    if rows:
        ctx.page.figure(figs.plot_history(rows, ctx.figs / "history.png"), "Loss terms per epoch")


def synthetic(ctx: ReportContext) -> None:
    """8. Synthetic galaxies, interpolation, traversal and deblending (the paper's Figures 9-12)."""
    assert ctx.desc is not None
    log(ctx.progress, "synthetic galaxies and latent-space exploration")
    whole = len(ctx.pred.rows) == len(ctx.ds)  # our predictions are reused when they cover the dataset in order
    gen_figs = generation_figures(ctx.net, ctx.ds, ctx.out_dir / "generation",
                                  predictions=ctx.pred if whole else None,
                                  companion_components=ctx.desc.companion_components, rows=ctx.pred.rows,
                                  progress=ctx.progress, log=lambda message: log(ctx.progress, message))
    ctx.page.section("synthetic", "Synthetic galaxies and the latent space explored (Figures 9-12)",
                     "New galaxies drawn from each component's Gaussian, a walk through each component's most "
                     "probable galaxy, every latent variable varied on its own, and deblending: a galaxy of a "
                     "component grouped by companions moved towards its companion-free twin, the companion fading "
                     "along the line. Same grey scale as above.")
    for title, path in gen_figs:
        ctx.page.figure(Path(path), title)


def synthetic_realism(ctx: ReportContext, n: int) -> None:
    """9. The synthetic galaxies, with the training stamps' sky noise, measured against held-out real ones
    (``astrovader benchmark realism``): only when the analysed rows are a held-out split and the dataset has a
    ``train`` split, since the comparison needs both."""
    if n <= 0:
        return
    split = ctx.metrics["split"]
    counts = ctx.ds.catalog["split"].astype(str).value_counts() if "split" in ctx.ds.catalog.columns else {}
    title = "How realistic the synthetic galaxies are"
    if split in ("all", "train") or min(counts.get(split, 0), counts.get("train", 0)) < 20:
        ctx.page.section("realism", title, "Not measured: the comparison needs at least 20 real galaxies the model "
                         "was not fitted on (a held-out split, e.g. --split test) and 20 of the dataset's 'train' "
                         "split (for the memorisation test).")
        return
    log(ctx.progress, f"measuring {min(n, counts[split]):,} synthetic galaxies against held-out real ones")
    res = realism(ctx.net, ctx.ds, n=n, split=split, seed=ctx.seed, noise=dataset_sky_noise(ctx.ds),
                  n_detailed=min(100, n), log=lambda message: log(ctx.progress, message))
    paths = write_realism(res, ctx.out_dir / "realism")
    m = res.memorisation
    ctx.metrics.update(realism_classifier_accuracy=res.classifier_accuracy,
                       realism_memorised_share=m["share_closer_than_real_p1"],
                       realism_worst_w1_ratio=float(res.parameters["w1_ratio"].max()))
    ctx.page.section("realism", title,
                     f"{res.n_synthetic:,} galaxies drawn as astrovader generate --noise draws them (each "
                     "component's Gaussian, the sky noise measured on this dataset's stamps) against "
                     f"{res.n_real:,} real galaxies of the '{html.escape(split)}' split, measured the same way, on "
                     f"{res.measured_on}. Each distance is shown beside the same distance between two halves of the "
                     "real galaxies: a ratio near 1 means the synthetic galaxies differ from the real ones no more "
                     "than real galaxies differ among themselves.")
    ctx.page.table(res.parameters, "Morphology, synthetic against real", csv=paths[1],
                   caption="W1/IQR: Wasserstein-1 distance over the real galaxies' interquartile range; KS: the "
                   "Kolmogorov-Smirnov statistic; each with its real-against-real floor. w1_ratio_reconstructed: the "
                   "same ratio for the decoder's reconstructions of real galaxies, the closest any sampler can get.")
    ctx.page.raw("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in format_realism(res).splitlines()[-3:])
                 + "</ul>")
    ctx.page.table(res.components, "Per component: synthetic galaxies of k against real members of k",
                   csv=paths[2], caption="W1/IQR ratio (synthetic against real over real against real) of each "
                   "parameter; '-' where a component has too few members.")
    ctx.page.figure(paths[3], "Distributions, real (grey) and synthetic (red)")
    ctx.page.figure(paths[4], "The synthetic galaxies nearest to a training galaxy",
                    "A synthetic galaxy much closer to a training galaxy than real galaxies ever are would be a copy.")


def summary(ctx: ReportContext, rows_text: str) -> None:
    """The closing summary: each component in one line, and what to read with care."""
    assert ctx.desc is not None
    ctx.page.section("summary", "Summary", "What the components are, in one line each, and what to read with care.")
    ctx.page.raw("<ul>" + "".join(
        f"<li><b>Component {int(r.component)}</b>"
        + (f" (mostly {html.escape(str(r.label_majority))})" if isinstance(getattr(r, "label_majority", None), str)
           else "") + f": {html.escape(r.sentence)}"
        + (" Not morphological: read its galaxies by their secondary labels." if int(r.component) in ctx.nm else "")
        + "</li>" for r in ctx.desc.table.itertuples()) + "</ul>"
        + f"<p>Numbers from {html.escape(rows_text)}; reconstruction error "
        f"{ctx.metrics['recon_mse_over_noise']:.2f} times the sky-noise variance.</p>")
