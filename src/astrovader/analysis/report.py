"""One command, one page: the paper's section 5 analyses for a trained run, as a self-contained report.html.

Predictions (latent means, probabilities, reconstruction errors) are computed once for the chosen rows and
every table and figure reuses them; only the few galaxies that are displayed are reconstructed. All images
are embedded in the page as base64 PNG data URIs and there is no JavaScript or external stylesheet, so the
page opens from disk, offline, years later. The PNGs and CSVs are also written beside it for papers.

Layout of OUT_DIR::

    report.html  predictions.parquet  metrics.json
    figures/*.png   tables/*.csv, tables/*.html
"""

from __future__ import annotations

import html
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis import figures as F
from astrovader.analysis.describe import (
    MEASURES,
    DescribeSettings,
    describe_components,
    detect_label_column,
    pixel_scale_of,
    training_overlap,
)
from astrovader.analysis.explore_figures import generation_figures
from astrovader.analysis.metrics import (
    GZ_DEFAULT_CUTS,
    METRIC_WORDS,
    calinski_harabasz,
    clustering_scores,
    gz_vote_classes,
    occupancy_table,
    overlap_matrix,
    secondary_labels,
    simplified_silhouette_samples,
    sky_noise_variance,
)
from astrovader.analysis.morphology import companions_in
from astrovader.analysis.page import Page, write_table
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.data.locks import exclusive
from astrovader.data.outputs import remove_stale_temporaries, swap_in, temporary_name, write_csv
from astrovader.data.selection import select_rows
from astrovader.data.stretch import PixelStretch
from astrovader.inference import infer, reconstruct
from astrovader.predict import prediction_table
from astrovader.runs import CONFIG, HISTORY, load_network, provenance, read_history

N_RANDOM_RECON = 10
N_BEST_WORST = 5
N_MEMBERS = 8
TSNE_MAX = 3000


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[report] {msg}", file=sys.stderr, flush=True)


def _fmt_metric(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "undefined (too few components with members)"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))




# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def make_report(run_dir: str | Path, dataset: str | Path | Dataset, out_dir: str | Path, split: str | None = None,
                cuts: Sequence[float] = (0.1, 0.5, 0.9), non_morphological: Sequence[int] | None = None,
                label_column: str | None = None, max_images: int | None = None, progress: bool = True,
                gz_cuts: dict[str, float] | None = None, seed: int = 0, device: str | None = None,
                allow_unfinished: bool = False, dpi: int = 110, vector: Sequence[str] = (),
                command: str | None = None, describe: DescribeSettings | None = None,
                overwrite: bool = False) -> Path:
    """Write the section-5 analyses of a trained run on ``dataset`` to ``out_dir``; returns report.html.

    ``split`` restricts to catalogue rows with that ``split`` value; by default the report uses the ``test``
    rows when the catalogue has them (the paper reports on its test set) and says prominently when it falls
    back to all rows; ``split="all"`` asks for every row. ``max_images`` randomly thins the rows (seeded).
    ``non_morphological`` lists components that group galaxies by something other than their shape; by
    default the components ``describe`` flags. ``gz_cuts`` overrides the Galaxy Zoo clean-sample cuts. Figures
    are PNGs at ``dpi`` with a copy in each ``vector`` format ("pdf", "svg").

    The report is built in a temporary folder beside ``out_dir`` and swapped in when complete, so a killed report
    never mixes new files with an old one; a non-empty ``out_dir`` is replaced only with ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: is a file; a report is a folder (report.html, figures/, tables/)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists and is not empty; pass --overwrite to replace it, or "
                              "choose another folder")
    with exclusive(out_dir):
        remove_stale_temporaries(out_dir)  # the half-built folder of a killed report
        tmp = temporary_name(out_dir, "")
        try:
            with F.figure_output(dpi, vector):
                _make_report(Path(run_dir), dataset, tmp, split, cuts, non_morphological, label_column,
                             max_images, progress, gz_cuts, seed, device, allow_unfinished, command,
                             describe or DescribeSettings(seed=seed), shown_dir=out_dir)
            swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _log(progress, f"wrote {out_dir / 'report.html'}")
    return out_dir / "report.html"


def _rows_used(ds: Dataset, split: str | None) -> tuple[str | None, str]:
    """The split to use (None: all rows) and a sentence saying which rows those are."""
    has_split = "split" in ds.catalog.columns
    if split is None and has_split and (ds.catalog["split"].astype(str) == "test").any():
        split = "test"
    if split == "all" or split is None:
        if has_split:
            return None, ("all rows, including the galaxies the model was trained on: these numbers are not "
                          "measured on unseen galaxies (use --split test)")
        return None, ("all rows: the dataset has no split column, so these numbers include the galaxies the model "
                      "was trained on (astrovader split DATASET --fractions 0.8,0.05,0.15, then retrain, "
                      "for held-out numbers)")
    return split, (f"the '{split}' split" + (", held out from training" if split == "test" else ""))


def _make_report(run_dir: Path, dataset: str | Path | Dataset, out_dir: Path, split: str | None,
                 cuts: Sequence[float], non_morphological: Sequence[int] | None, label_column: str | None,
                 max_images: int | None, progress: bool, gz_cuts: dict[str, float] | None, seed: int,
                 device: str | None, allow_unfinished: bool, command: str | None,
                 describe: DescribeSettings, shown_dir: Path) -> Path:
    import pyarrow.parquet as pq

    cuts = tuple(float(c) for c in cuts)
    if any(not 0 <= c < 1 for c in cuts):
        raise ValueError(f"probability cuts must lie in [0, 1), got {cuts}")
    cfg, net = load_network(run_dir, device, allow_unfinished=allow_unfinished)
    ds = open_dataset(dataset)
    K, J = cfg.model.n_clusters, cfg.model.latent_dim
    if non_morphological is not None and any(int(c) < 0 or int(c) >= K for c in non_morphological):
        raise ValueError(f"--non-morphological components must be in 0..{K - 1}, got {list(non_morphological)}")
    label_col = detect_label_column(ds.catalog, label_column)
    figs, tables = out_dir / "figures", out_dir / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    split, rows_note = _rows_used(ds, split)
    rows = select_rows(ds, split, max_images, seed)
    leak = training_overlap(run_dir, ds.ids[rows])
    if leak:  # the banner must not call training galaxies held out
        rows_note = f"{rows_note.replace(', held out from training', '')}. WARNING: {leak}"
        print(f"astrovader report: WARNING: {leak}", file=sys.stderr)
    _log(progress, f"inference on {len(rows):,} images ({rows_note})")
    if len(rows) == 0:
        raise ValueError("no images selected: the dataset (or the chosen split) is empty")
    pred = infer(net, ds, rows=rows, progress=progress)
    catalog = ds.catalog.iloc[rows].reset_index(drop=True)
    prov = provenance(run_dir, cfg, command)
    table = prediction_table(catalog["id"].to_numpy(), pred.as_dict())
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **prov}),
                   out_dir / "predictions.parquet")

    def images(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float inputs and reconstructions of the objects at positions ``local`` of the prediction arrays."""
        local = np.asarray(local, dtype=np.int64)
        if len(local) == 0:
            shape = (0, ds.channels, ds.image_size, ds.image_size)
            return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        raw = ds.take(pred.rows[local])
        return raw.astype(np.float32) / 255.0, reconstruct(net, raw)

    page = Page(out_dir)
    rows_text = f"{rows_note}; {len(rows):,} galaxies" + (f" (a random {max_images:,})" if max_images else "")
    metrics: dict[str, Any] = {"run_dir": str(run_dir), "dataset": str(ds.path), "split": split or "all",
                               "rows": rows_text, "n_objects": int(len(rows)), "n_components": K, "latent_dim": J,
                               "mean_recon_mse": float(pred.recon_mse.mean()),
                               "median_recon_mse": float(np.median(pred.recon_mse))}
    metrics["sky_noise_variance"] = sky_noise_variance(ds.take(np.sort(rng.choice(rows, min(500, len(rows)),
                                                                                  replace=False))))
    metrics["recon_mse_over_noise"] = metrics["mean_recon_mse"] / metrics["sky_noise_variance"] \
        if metrics["sky_noise_variance"] > 0 else float("nan")
    stretch = ds.meta.get("stretch") or (ds.meta.get("preprocessing") or {}).get("stretch")
    stretch_text = (f"the dataset's stretch ({html.escape(str(stretch))})" if stretch else
                    "the stretch of the images as ingested, for SDSS JPEGs the survey's asinh colour stretch")

    # 0. what each component is -----------------------------------------------------------------------
    _log(progress, "describing the components")
    desc = describe_components(pred, ds, catalog, weights=net.gmm.weights.detach().cpu().numpy(),
                               label_column=label_col, pixel_scale=pixel_scale_of(ds), settings=describe)
    nm = tuple(sorted({int(c) for c in non_morphological})) if non_morphological is not None else \
        tuple(desc.non_morphological)
    metrics["non_morphological"] = ("components " + ", ".join(map(str, nm))) if nm else "none"
    page.section("components", "What each component is",
                 "Each mixture component described by its members, measured with photutils, GalSim and statmorph "
                 + ("on linear flux (the dataset's recorded stretch inverted; Sersic fits convolved with its "
                    "recorded PSF where it has one)" if desc.table.attrs.get("flux") == "linear" else
                    f"on the stored pixels ({stretch_text}; the dataset records no stretch, so sizes and profiles are "
                    "relative)")
                 + ": sizes, shape, light concentration and second sources in "
                 "the stamp, and the labels where the catalogue has them. Words compare a component with the "
                 "other components of this dataset. <span class='flag'>Flagged</span> components group galaxies "
                 "by companions or orientation rather than shape" + (" (here as given with --non-morphological)."
                                                                   if non_morphological is not None else "."))
    page.raw("<ul>" + "".join(
        f"<li><b>Component {int(r.component)}</b>: {html.escape(r.sentence)}"
        + (" <span class='flag'>[not morphological]</span>" if int(r.component) in nm else "") + "</li>"
        for r in desc.table.itertuples()) + "</ul>")
    csv, _ = write_table(desc.table, tables, "components", "Component descriptions", png=False)
    write_csv(desc.measurements, tables / "component_galaxies.csv")
    # two tables that each fit the page: who the members are, then how they look
    shape_cols = [c for c in ("r50", "r50_arcsec", "r90", "r90_arcsec", "concentration", "asymmetry", "gini", "m20",
                              "sersic_n", "axis_ratio", "surface_brightness") if c in desc.table.columns]
    who = desc.table.drop(columns=["sentence", "n_measured", *shape_cols])
    page.table(who, "Component descriptions: members and flags", csv,
               f"The core is the most probable {describe.core_fraction:.0%} of the members (10 to {describe.n_core}).",
               legend={k: v for k, v in MEASURES.items() if k in who.columns})
    looks = desc.table[["component", "n_measured", *shape_cols]]
    page.table(looks, "Component descriptions: morphology (medians)", csv,
               f"Medians over {describe.max_members} random members per component ({describe.n_detailed} for the "
               "statmorph columns). Per-galaxy measurements: tables/component_galaxies.csv.",
               legend={k: v for k, v in MEASURES.items() if k in looks.columns})

    # 1. reconstructions --------------------------------------------------------------------------
    _log(progress, "reconstructions")
    page.section("recon", "Reconstructions",
                 "How faithfully the model re-draws galaxies from its latent space: input, reconstruction (the "
                 "decoded latent mean) and residual (input - reconstruction) for random, best and worst galaxies. "
                 f"Grey levels are {stretch_text}, divided by 255; inputs and reconstructions share one linear "
                 "scale per figure, residuals a symmetric red (under-predicted) / blue scale. Expect smooth, "
                 "blurred copies: the paper's reconstructions lose spiral arms and knots too.")
    n = len(rows)
    for name, title, local in (
            ("recon_random", "Random galaxies", np.sort(rng.choice(n, min(N_RANDOM_RECON, n), replace=False))),
            ("recon_best", f"Best {N_BEST_WORST} by reconstruction MSE", np.argsort(pred.recon_mse)[:N_BEST_WORST]),
            ("recon_worst", f"Worst {N_BEST_WORST} by reconstruction MSE",
             np.argsort(pred.recon_mse)[::-1][:N_BEST_WORST])):
        x, r = images(local)
        caps = [f"MSE {pred.recon_mse[i]:.2e}\ncomp. {pred.labels[i]}" for i in local]
        page.figure(F.plot_reconstructions(x, r, figs / f"{name}.png", title, caps, pixel_scale_of(ds)), title)
    page.raw(f"<p>Mean reconstruction MSE {metrics['mean_recon_mse']:.4g}, median "
             f"{metrics['median_recon_mse']:.4g} (pixels scaled to [0, 1]), {metrics['recon_mse_over_noise']:.2f} "
             f"times the sky-noise variance of the stamps' borders ({metrics['sky_noise_variance']:.3g}): 1 is the "
             "noise floor, where only the noise is missed.</p>")

    # 2. cluster statistics -------------------------------------------------------------------------
    _log(progress, "component statistics")
    occ = occupancy_table(pred.probs, cuts, latents=pred.mu)
    sil = simplified_silhouette_samples(pred.mu, pred.labels)
    metrics["simplified_silhouette"] = float(sil.mean())
    metrics["calinski_harabasz"] = calinski_harabasz(pred.mu, pred.labels)
    metrics["occupied_components"] = int(len(np.unique(pred.labels)))
    page.section("stats", "Component statistics (Table 2)",
                 "How many galaxies each component holds and how confidently. n_max: galaxies whose most "
                 "probable component it is. n_p&gt;cut: galaxies whose normalised "
                 "probability for the component exceeds the cut (an object may count in several components); "
                 "in the 'all' row, objects with any probability above the cut. silhouette: mean simplified "
                 "silhouette of the members, in latent-mean space.")
    csv, _ = write_table(occ, tables, "cluster_stats", "Component statistics")  # its PNG is for papers
    page.table(occ, "Component statistics", csv,
               f"Whole sample: simplified silhouette {metrics['simplified_silhouette']:.3f}, "
               f"Calinski-Harabasz index {metrics['calinski_harabasz']:.4g}. The same table as an image: "
               "figures/cluster_stats_table.png.")

    # 3. overlap -------------------------------------------------------------------------------------
    _log(progress, "overlap matrix")
    ov = overlap_matrix(pred.probs, pred.labels)
    ov_df = pd.DataFrame(ov, columns=[f"p_{c}" for c in range(K)])
    ov_df.insert(0, "members_of", list(range(K)))
    write_csv(ov_df, tables / "overlap.csv")
    page.section("overlap", "Component overlap (Figure 5)",
                 "Whether the components are distinct or blend into each other. Row c is the mean probability "
                 "vector of the galaxies whose most probable component is c: a diagonal near 1 means confident "
                 "members; large off-diagonal values mean members shared with another component.")
    page.figure(F.plot_overlap(ov, figs / "overlap.png", counts=np.bincount(pred.labels, minlength=K)),
                "Overlap matrix", "CSV: tables/overlap.csv.")

    # 4. members ----------------------------------------------------------------------------------------
    _log(progress, "members")
    page.section("members", "Component members (Figures 6-8)",
                 "What the galaxies of each component look like: the most probable members (what the component "
                 "is about) and random members (what it holds). Left: inputs, with the component probability in "
                 "yellow; right: the same galaxies reconstructed. Compare with the descriptions above.")
    top_rows, rand_rows = [], []
    for c in range(K):
        members = np.flatnonzero(pred.labels == c)
        label = f"{c}\nn={len(members):,}" + ("\nnot morph." if c in nm else "")
        top = members[np.argsort(-pred.probs[members, c])][:N_MEMBERS]
        rnd = np.sort(rng.choice(members, min(N_MEMBERS, len(members)), replace=False)) if len(members) else members
        for store, local in ((top_rows, top), (rand_rows, rnd)):
            x, r = images(local)
            store.append((label, x, r, pred.probs[local, c]))
    page.figure(F.plot_members(top_rows, figs / "members_top.png", "Most probable members of each component",
                               N_MEMBERS, pixel_scale_of(ds)), "Most probable members", "Figure 6 of the paper.")
    page.figure(F.plot_members(rand_rows, figs / "members_random.png", "Random members of each component",
                               N_MEMBERS, pixel_scale_of(ds)), "Random members", "Figure 7 of the paper.")
    if nm and len(nm) < K:
        sec = secondary_labels(pred.probs, nm)
        in_nm = np.isin(sec["primary"].to_numpy(), nm)
        kept_note = ""
        if non_morphological is None and desc.companion_components:
            # a galaxy of a companion-grouped component is given another label only if its own stamp has a
            # second source: the others are what the component holds besides pairs, and keep it
            cand = np.flatnonzero(np.isin(pred.labels, desc.companion_components))
            paired = companions_in(ds.take(pred.rows[cand]), stretch=PixelStretch.from_meta(ds.meta))
            in_nm[cand[~paired]] = False
            kept_note = (f" Of the {len(cand):,} members of companion-grouped components, the {int(paired.sum()):,} "
                         "with a second source detected in their stamp are relabelled; the others keep their "
                         "component.")
        sec_df = pd.concat([catalog[["id"]], sec], axis=1)[in_nm].reset_index(drop=True)
        write_csv(sec_df, tables / "secondary_labels.csv")
        cross = pd.crosstab(sec_df["primary"], sec_df["secondary"]).reset_index() if len(sec_df) else \
            pd.DataFrame({"primary": list(nm)})
        cross.columns = [str(c) if i == 0 else f"secondary_{c}" for i, c in enumerate(cross.columns)]
        csv, _ = write_table(cross, tables, "secondary_counts", "Secondary morphological labels", png=False)
        page.table(cross, "Secondary morphological labels", csv,
                   f"Galaxies in non-morphological components {list(nm)} counted by their most probable "
                   "remaining component (probabilities renormalised over the others)." + kept_note
                   + " Per-galaxy labels: tables/secondary_labels.csv.")
        groups = []
        for c in nm:
            sel = np.flatnonzero((sec["primary"].to_numpy() == c) & in_nm)
            for s, cnt in pd.Series(sec["secondary"].to_numpy()[sel]).value_counts().items():
                pick = sel[sec["secondary"].to_numpy()[sel] == s]
                pick = pick[np.argsort(-sec["secondary_prob"].to_numpy()[pick])][:N_MEMBERS]
                groups.append((f"{c} -> {s}\nn={cnt:,}", images(pick)[0]))
        page.figure(F.plot_secondary(groups, figs / "secondary.png",
                                     "Non-morphological components by secondary morphological label",
                                     N_MEMBERS),
                    "Secondary morphological labels", "Rows: primary -> secondary component (Figure 8).")

    # 5. latent space ----------------------------------------------------------------------------------
    _log(progress, "latent space (t-SNE)")
    page.section("latent", "Latent space",
                 "How the galaxies are arranged in the J-dimensional latent space. t-SNE draws neighbours "
                 "together but distorts distances and sizes: read it for which components touch, not for how "
                 "far apart they are. The histograms show each latent variable with the mixture's means as "
                 "ticks: a variable whose lines differ separates the components.")
    sub = np.sort(rng.choice(n, min(TSNE_MAX, n), replace=False))
    if len(sub) >= 5:
        from sklearn.manifold import TSNE

        tsne = TSNE(2, perplexity=float(min(30, (len(sub) - 1) / 3)), init="pca", random_state=seed,
                    method="exact" if len(sub) <= 500 else "barnes_hut", n_jobs=1)
        emb = tsne.fit_transform(pred.mu[sub].astype(np.float64))
        page.figure(F.plot_tsne(emb, pred.labels[sub], K, figs / "tsne.png",
                                f"t-SNE of latent means ({len(sub):,} galaxies)"),
                    "t-SNE of the latent space", "Coloured by most probable component.")
    page.figure(F.plot_latent_histograms(pred.mu, pred.labels, K, figs / "latent_histograms.png",
                                         net.gmm.means.detach().cpu().numpy()),
                "Latent histograms", "Grey: all galaxies; lines: members of each component.")

    # 6. labels ---------------------------------------------------------------------------------------------
    gz = gz_vote_classes(catalog, gz_cuts)
    if label_col is not None or gz is not None:
        _log(progress, "comparison with labels")
        page.section("labels", "Comparison with labels (Figures 13-14)",
                     "How the unsupervised components line up with labels the model never saw. Counts and "
                     "fractions of each class per component; a component mostly of one class is a clean "
                     "morphological group. The scores are explained in the table at the top.")
    if label_col is not None:
        lab = catalog[label_col]
        names = None
        if label_col == "true_class" and "class_name" in catalog.columns:
            names = dict(zip(catalog["true_class"], catalog["class_name"], strict=True))
        ok = lab.notna().to_numpy()
        true = lab.to_numpy()[ok]
        counts = pd.crosstab(pd.Series(pred.labels[ok], name="component"),
                             pd.Series([names.get(t, t) if names else t for t in true], name=label_col))
        counts = counts.reindex(range(K), fill_value=0)
        out_counts = counts.reset_index()
        out_counts.columns = [str(c) for c in out_counts.columns]
        csv, _ = write_table(out_counts, tables, "label_counts", f"Components vs {label_col}", png=False)
        scores = clustering_scores(true.astype(str), pred.labels[ok]) if ok.any() else {}
        metrics["label_column"] = label_col
        metrics.update({f"label_{k}": v for k, v in scores.items()})
        page.table(out_counts, f"Components vs {label_col}", csv,
                   "Accuracy after Hungarian matching {accuracy:.3f}, NMI {nmi:.3f}, ARI {ari:.3f}, purity "
                   "{purity:.3f}.".format(**scores) if scores else "")
        page.figure(F.plot_label_counts(counts, figs / "label_counts.png", f"{label_col} per component"),
                    f"{label_col} per component", "Counts.")
        page.figure(F.plot_label_counts(counts, figs / "label_fractions.png", f"{label_col} share of each component",
                                        normalise=True), f"{label_col} fractions", "Each component's class mix.")
    if gz is not None:
        comp = pd.Series(pred.labels, name="component")
        for name, cols, fig_title in (("gz_smooth_featured", ["smooth", "featured"], "Smooth vs featured"),
                                      ("gz_edge_on", ["edge_on", "not_edge_on"], "Edge-on vs not edge-on")):
            if not all(c in gz.columns for c in cols):
                continue
            cnt = pd.DataFrame({c: gz[c].groupby(comp).sum() for c in cols}).reindex(range(K), fill_value=0)
            cnt = cnt.astype(int)
            out_cnt = cnt.reset_index().rename(columns={"index": "component"})
            csv, _ = write_table(out_cnt, tables, name, f"Galaxy Zoo: {fig_title}", png=False)
            page.table(out_cnt, f"Galaxy Zoo: {fig_title}", csv,
                       "Clean samples from debiased vote fractions (cuts: "
                       + ", ".join(f"{k} {v:g}" for k, v in {**GZ_DEFAULT_CUTS, **(gz_cuts or {})}.items()) + ").")
            page.figure(F.plot_label_counts(cnt, figs / f"{name}.png", f"Galaxy Zoo: {fig_title}"),
                        f"Galaxy Zoo: {fig_title}", "Counts per component.")

    # 7. training history -------------------------------------------------------------------------------------
    if (run_dir / HISTORY).is_file():
        _log(progress, "training history")
        history = read_history(run_dir)
        page.section("history", "Training history (Figure 2)",
                     "The loss terms per epoch (per image, lower is better); solid: training, dashed: validation; "
                     "shading: the s3VDC phases. The GMM term is added during annealing with a growing weight, "
                     "so the total loss rises in each annealing phase by design and falls in the static phase "
                     "after it. Validation losses are computed without the random sampling and flips of "
                     "training, so they can sit below the training losses.")
        if history:
            page.figure(F.plot_history(history, figs / "history.png"), "Loss terms per epoch")

    # 8. synthetic galaxies --------------------------------------------------------------------------------------
    _log(progress, "synthetic galaxies and latent-space exploration")
    whole = len(rows) == len(ds)  # our predictions can be reused when they cover the whole dataset in order
    gen_figs = generation_figures(net, ds, out_dir / "generation", predictions=pred if whole else None,
                                  companion_components=desc.companion_components, rows=rows)
    page.section("synthetic", "Synthetic galaxies and the latent space explored (Figures 9-12)",
                 "New galaxies drawn from each component's Gaussian, a walk through each component's most "
                 "probable galaxy, every latent variable varied on its own, and deblending: a galaxy of a "
                 "component grouped by companions moved towards its companion-free twin, the companion fading "
                 "along the line. Same grey scale as above.")
    for title, path in gen_figs:
        page.figure(Path(path), title)

    # header: metrics and config ----------------------------------------------------------------------------------
    (out_dir / "metrics.json").write_text(json.dumps({**metrics, "provenance": prov}, indent=2, default=float) + "\n")
    page.section("config", "Run configuration",
                 "The run's config.toml as used for training: every setting that made this model.")
    cfg_path = run_dir / CONFIG
    page.raw(f"<pre>{html.escape(cfg_path.read_text() if cfg_path.is_file() else '(no config.toml)')}</pre>")
    page.section("next", "Next steps",
                 "Commands that take this analysis further, with this report's run and dataset filled in.")
    rd, dd = html.escape(str(run_dir)), html.escape(str(ds.path))
    steps = [(f"astrovader describe {rd} {dd} components.csv" + (f" --split {html.escape(split)}" if split else ""),
              "the description table and per-galaxy measurements as CSV, for your own selections"),
             (f"astrovader predict {rd} {dd} predictions.fits", "component probabilities of every galaxy, for "
              "a catalogue cross-match (FITS with provenance keys)"),
             (f"astrovader explore {rd} {dd} figures/", "the exploration figures with other settings, e.g. "
              "--companion C to deblend from another component"),
             (f"astrovader report {rd} {dd} {html.escape(str(shown_dir))} --overwrite --non-morphological C1,C2",
              "if you judge other components to be grouped by something other than shape"),
             (f"astrovader choose-k {rd} {dd} --sweep", "whether the data support another number of components")]
    if split is None and "split" not in ds.catalog.columns:
        steps.insert(0, (f"astrovader split {dd} --fractions 0.8,0.05,0.15", "hold out test galaxies, then "
                         "retrain, so the numbers here can be measured on galaxies the model never saw"))
    page.raw("<ul>" + "".join(f"<li><code>{c}</code><br>{w}</li>" for c, w in steps) + "</ul>")

    def metric_row(k: str, v: Any) -> str:
        name, what = METRIC_WORDS.get(k, (k, ""))
        return (f"<tr><th>{html.escape(name)}</th><td>{_fmt_metric(v)}</td><td class='note'>{html.escape(what)}"
                "</td></tr>")

    shown = {k: v for k, v in metrics.items() if k not in ("run_dir", "dataset", "split")}
    header = (f'<p class="banner">Galaxies analysed: {html.escape(rows_text)}.</p>'
              f'<p class="note">astrovader {html.escape(prov["ASTROVER"])}, made {html.escape(prov["DATE"])} UTC '
              f'by <code>{html.escape(command or "make_report(...)")}</code>. Run <code>{rd}</code> (weights '
              f'sha256 {html.escape(prov["WEIGHTS"])}, trained with train.seed = {html.escape(prov["SEED"])}), '
              f'dataset <code>{dd}</code>. Tables: '
              '<a href="tables/">tables/</a>; predictions: <a href="predictions.parquet">predictions.parquet</a>; '
              '<a href="metrics.json">metrics.json</a>.</p>'
              '<table class="data metrics"><tr><th>measure</th><th>value</th><th>what it means</th></tr>'
              + "".join(metric_row(k, v) for k, v in shown.items()) + "</table>")
    out = out_dir / "report.html"
    page.section("summary", "Summary", "What the components are, in one line each, and what to read with care.")
    page.raw("<ul>" + "".join(
        f"<li><b>Component {int(r.component)}</b>"
        + (f" (mostly {html.escape(str(r.label_majority))})" if isinstance(getattr(r, "label_majority", None), str)
           else "") + f": {html.escape(r.sentence)}"
        + (" Not morphological: read its galaxies by their secondary labels." if int(r.component) in nm else "")
        + "</li>" for r in desc.table.itertuples()) + "</ul>"
        + f"<p>Numbers from {html.escape(rows_text)}; reconstruction error {metrics['recon_mse_over_noise']:.2f} "
        "times the sky-noise variance.</p>")
    where = run_dir.resolve()
    name = where.name if where.name not in ("run", "model") else f"{where.parent.name}/{where.name}"
    out.write_text(page.render(f"AstroVaDEr report: {name}", header), encoding="utf-8")
    return out
