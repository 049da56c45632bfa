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

import base64
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis import figures as F
from astrovader.analysis.explore_figures import generation_figures
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
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.data.selection import select_rows
from astrovader.inference import infer, reconstruct
from astrovader.predict import prediction_table
from astrovader.runs import CONFIG, HISTORY, load_network, read_history

LABEL_COLUMNS = ("true_class", "gz1_label", "label")
N_RANDOM_RECON = 10
N_BEST_WORST = 5
N_MEMBERS = 8
TSNE_MAX = 3000


# --------------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------------
def detect_label_column(catalog: pd.DataFrame, label_column: str | None = None) -> str | None:
    """The class-label column: the one asked for (which must exist), else the first of LABEL_COLUMNS."""
    if label_column is not None:
        if label_column not in catalog.columns:
            raise ValueError(f"label column {label_column!r} is not in the catalogue; columns: "
                             f"{', '.join(map(str, catalog.columns))}")
        return label_column
    return next((c for c in LABEL_COLUMNS if c in catalog.columns), None)


# --------------------------------------------------------------------------------------------------
# the HTML page
# --------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 1.5em 3em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #bbb}
figure{margin:1em 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555;margin-top:.3em}
table.data{border-collapse:collapse;font-size:.85em;margin:.8em 0}
table.data th,table.data td{border:1px solid #ccc;padding:.2em .6em;text-align:right}
table.data th{background:#eee}table.data tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}
nav ul{columns:2;font-size:.9em}nav li{break-inside:avoid}nav li li{break-inside:auto}.note{color:#555;font-size:.9em}
"""


class _Page:
    """Accumulates sections; every figure and table gets an anchor listed in the table of contents."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.sections: list[tuple[str, str, list[str]]] = []
        self.toc: list[tuple[str, str, list[tuple[str, str]]]] = []
        self._n = 0

    def section(self, sid: str, title: str, intro: str = "") -> None:
        self.sections.append((sid, title, [f'<p class="note">{intro}</p>'] if intro else []))
        self.toc.append((sid, title, []))

    def _anchor(self, title: str) -> str:
        self._n += 1
        aid = f"item{self._n}"
        self.toc[-1][2].append((aid, title))
        return aid

    def figure(self, path: Path, title: str, caption: str = "") -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        rel = Path(path).relative_to(self.out_dir).as_posix()
        aid = self._anchor(title)
        self.sections[-1][2].append(
            f'<figure id="{aid}"><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)} "
            f'<a href="{html.escape(rel)}">PNG</a></figcaption></figure>')

    def table(self, df: pd.DataFrame, title: str, csv: Path | None = None, caption: str = "") -> None:
        aid = self._anchor(title)
        link = f' <a href="{html.escape(csv.relative_to(self.out_dir).as_posix())}">CSV</a>' if csv else ""
        self.sections[-1][2].append(
            f'<h3 id="{aid}">{html.escape(title)}</h3><p class="note">{html.escape(caption)}{link}</p>'
            + df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.3f}", na_rep="-"))

    def raw(self, text: str) -> None:
        self.sections[-1][2].append(text)

    def render(self, title: str, header: str) -> str:
        toc = ["<nav><h2>Contents</h2><ul>"]
        for sid, stitle, items in self.toc:
            sub = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in items)
            toc.append(f'<li><a href="#{sid}">{html.escape(stitle)}</a>{"<ul>" + sub + "</ul>" if sub else ""}</li>')
        toc.append("</ul></nav>")
        body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{"".join(parts)}</section>'
                       for sid, t, parts in self.sections)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                '<link rel="icon" href="data:,">'  # no favicon request: the page makes no network access at all
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{header}{''.join(toc)}{body}</body></html>\n")


def _write_table(df: pd.DataFrame, tables: Path, name: str, title: str, png: bool = True) -> tuple[Path, Path | None]:
    """CSV + standalone HTML (+ PNG rendering) of one table."""
    csv = tables / f"{name}.csv"
    df.to_csv(csv, index=False)
    (tables / f"{name}.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h2>{html.escape(title)}</h2>"
        + df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.3f}", na_rep="-")
        + "</body></html>\n")
    return csv, (F.plot_table(df, tables.parent / "figures" / f"{name}_table.png", title) if png else None)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[report] {msg}", file=sys.stderr, flush=True)


def _fmt_metric(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def make_report(run_dir: str | Path, dataset: str | Path | Dataset, out_dir: str | Path, split: str | None = None,
                cuts: Sequence[float] = (0.1, 0.5, 0.9), non_morphological: Sequence[int] = (),
                label_column: str | None = None, max_images: int | None = None, progress: bool = True,
                gz_cuts: dict[str, float] | None = None, seed: int = 0, device: str | None = None,
                allow_unfinished: bool = False) -> Path:
    """Write the section-5 analyses of a trained run on ``dataset`` to ``out_dir``; returns report.html.

    ``split`` restricts to catalogue rows with that ``split`` value (the paper reports on its test set);
    ``max_images`` randomly thins the rows (seeded) for a quick look at a large dataset. ``non_morphological``
    lists components that group galaxies by something other than their shape (companions, in the paper), for
    which secondary morphological labels are derived. ``gz_cuts`` overrides the Galaxy Zoo clean-sample cuts."""
    import pyarrow.parquet as pq

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cuts = tuple(float(c) for c in cuts)
    if any(not 0 <= c < 1 for c in cuts):
        raise ValueError(f"probability cuts must lie in [0, 1), got {cuts}")
    cfg, net = load_network(run_dir, device, allow_unfinished=allow_unfinished)
    ds = open_dataset(dataset)
    K, J = cfg.model.n_clusters, cfg.model.latent_dim
    nm = tuple(sorted({int(c) for c in non_morphological}))
    if any(c < 0 or c >= K for c in nm):
        raise ValueError(f"--non-morphological components must be in 0..{K - 1}, got {list(nm)}")
    label_col = detect_label_column(ds.catalog, label_column)
    figs, tables = out_dir / "figures", out_dir / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    rows = select_rows(ds, split, max_images, seed)
    _log(progress, f"inference on {len(rows):,} images")
    if len(rows) == 0:
        raise ValueError("no images selected: the dataset (or the chosen split) is empty")
    pred = infer(net, ds, rows=rows, progress=progress)
    catalog = ds.catalog.iloc[rows].reset_index(drop=True)
    pq.write_table(prediction_table(catalog["id"].to_numpy(), pred.as_dict()), out_dir / "predictions.parquet")

    def images(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float inputs and reconstructions of the objects at positions ``local`` of the prediction arrays."""
        local = np.asarray(local, dtype=np.int64)
        if len(local) == 0:
            shape = (0, ds.channels, ds.image_size, ds.image_size)
            return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        raw = ds.take(pred.rows[local])
        return raw.astype(np.float32) / 255.0, reconstruct(net, raw)

    page = _Page(out_dir)
    metrics: dict[str, Any] = {"run_dir": str(run_dir), "dataset": str(ds.path), "split": split or "all",
                               "n_objects": int(len(rows)), "n_components": K, "latent_dim": J,
                               "mean_recon_mse": float(pred.recon_mse.mean()),
                               "median_recon_mse": float(np.median(pred.recon_mse))}

    # 1. reconstructions --------------------------------------------------------------------------
    _log(progress, "reconstructions")
    page.section("recon", "Reconstructions",
                 "Input, reconstruction (decoded latent mean) and residual (input - reconstruction). Inputs and "
                 "reconstructions share one linear stretch per figure; residuals use a symmetric diverging scale.")
    n = len(rows)
    for name, title, local in (
            ("recon_random", "Random galaxies", np.sort(rng.choice(n, min(N_RANDOM_RECON, n), replace=False))),
            ("recon_best", f"Best {N_BEST_WORST} by reconstruction MSE", np.argsort(pred.recon_mse)[:N_BEST_WORST]),
            ("recon_worst", f"Worst {N_BEST_WORST} by reconstruction MSE",
             np.argsort(pred.recon_mse)[::-1][:N_BEST_WORST])):
        x, r = images(local)
        caps = [f"MSE {pred.recon_mse[i]:.2e}\ncomp. {pred.labels[i]}" for i in local]
        page.figure(F.plot_reconstructions(x, r, figs / f"{name}.png", title, caps), title)
    page.raw(f"<p>Mean reconstruction MSE {metrics['mean_recon_mse']:.4g}, median "
             f"{metrics['median_recon_mse']:.4g} (pixels scaled to [0, 1]).</p>")

    # 2. cluster statistics -------------------------------------------------------------------------
    _log(progress, "cluster statistics")
    occ = occupancy_table(pred.probs, cuts, latents=pred.mu)
    sil = simplified_silhouette_samples(pred.mu, pred.labels)
    metrics["simplified_silhouette"] = float(sil.mean())
    metrics["calinski_harabasz"] = calinski_harabasz(pred.mu, pred.labels)
    metrics["occupied_components"] = int(len(np.unique(pred.labels)))
    page.section("stats", "Cluster statistics (Table 2)",
                 "n_max: objects whose most probable component it is. n_p&gt;cut: objects whose normalised "
                 "probability for the component exceeds the cut (an object may count in several components); "
                 "in the 'all' row, objects with any probability above the cut. silhouette: mean simplified "
                 "silhouette of the members, in latent-mean space.")
    csv, png = _write_table(occ, tables, "cluster_stats", "Cluster statistics")
    page.table(occ, "Cluster statistics", csv,
               f"Whole sample: simplified silhouette {metrics['simplified_silhouette']:.3f}, "
               f"Calinski-Harabasz index {metrics['calinski_harabasz']:.4g}.")
    page.figure(png, "Cluster statistics table", "The same table as an image.")

    # 3. overlap -------------------------------------------------------------------------------------
    _log(progress, "overlap matrix")
    ov = overlap_matrix(pred.probs, pred.labels)
    ov_df = pd.DataFrame(ov, columns=[f"p_{c}" for c in range(K)])
    ov_df.insert(0, "members_of", list(range(K)))
    ov_df.to_csv(tables / "overlap.csv", index=False)
    page.section("overlap", "Component overlap (Figure 5)",
                 "Row c: the mean probability vector of the galaxies whose most probable component is c. "
                 "A small diagonal value means members are shared with other components.")
    page.figure(F.plot_overlap(ov, figs / "overlap.png", counts=np.bincount(pred.labels, minlength=K)),
                "Overlap matrix", "CSV: tables/overlap.csv.")

    # 4. members ----------------------------------------------------------------------------------------
    _log(progress, "members")
    page.section("members", "Component members (Figures 6-8)",
                 "Left: inputs, with the component probability in yellow; right: the same galaxies reconstructed.")
    top_rows, rand_rows = [], []
    for c in range(K):
        members = np.flatnonzero(pred.labels == c)
        label = f"{c}\nn={len(members):,}"
        top = members[np.argsort(-pred.probs[members, c])][:N_MEMBERS]
        rnd = np.sort(rng.choice(members, min(N_MEMBERS, len(members)), replace=False)) if len(members) else members
        for store, local in ((top_rows, top), (rand_rows, rnd)):
            x, r = images(local)
            store.append((label, x, r, pred.probs[local, c]))
    page.figure(F.plot_members(top_rows, figs / "members_top.png", "Most probable members of each component",
                               N_MEMBERS), "Most probable members", "Figure 6 of the paper.")
    page.figure(F.plot_members(rand_rows, figs / "members_random.png", "Random members of each component",
                               N_MEMBERS), "Random members", "Figure 7 of the paper.")
    if nm:
        sec = secondary_labels(pred.probs, nm)
        in_nm = np.isin(sec["primary"].to_numpy(), nm)
        sec_df = pd.concat([catalog[["id"]], sec], axis=1)[in_nm].reset_index(drop=True)
        sec_df.to_csv(tables / "secondary_labels.csv", index=False)
        cross = pd.crosstab(sec_df["primary"], sec_df["secondary"]).reset_index() if len(sec_df) else \
            pd.DataFrame({"primary": list(nm)})
        cross.columns = [str(c) if i == 0 else f"secondary_{c}" for i, c in enumerate(cross.columns)]
        csv, _ = _write_table(cross, tables, "secondary_counts", "Secondary morphological labels", png=False)
        page.table(cross, "Secondary morphological labels", csv,
                   f"Galaxies in non-morphological components {list(nm)} counted by their most probable "
                   "remaining component (probabilities renormalised over the others). Per-galaxy labels: "
                   "tables/secondary_labels.csv.")
        groups = []
        for c in nm:
            sel = np.flatnonzero(sec["primary"].to_numpy() == c)
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
    page.section("latent", "Latent space")
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
        page.section("labels", "Comparison with labels (Figures 13-14)")
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
        csv, _ = _write_table(out_counts, tables, "label_counts", f"Components vs {label_col}", png=False)
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
            csv, _ = _write_table(out_cnt, tables, name, f"Galaxy Zoo: {fig_title}", png=False)
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
                     "Solid: training; dashed: validation. Shading: gamma-training, annealing, static phases.")
        if history:
            page.figure(F.plot_history(history, figs / "history.png"), "Loss terms per epoch")

    # 8. synthetic galaxies --------------------------------------------------------------------------------------
    _log(progress, "synthetic galaxies and latent-space exploration")
    whole = len(rows) == len(ds)  # our predictions can be reused when they cover the whole dataset in order
    gen_figs = generation_figures(net, ds, out_dir / "generation",
                                  predictions=out_dir / "predictions.parquet" if whole else None)
    page.section("synthetic", "Synthetic galaxies")
    for title, path in gen_figs:
        page.figure(Path(path), title)

    # header: metrics and config ----------------------------------------------------------------------------------
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    page.section("config", "Run configuration")
    cfg_path = run_dir / CONFIG
    page.raw(f"<pre>{html.escape(cfg_path.read_text() if cfg_path.is_file() else '(no config.toml)')}</pre>")
    mrows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt_metric(v)}</td></tr>" for k, v in metrics.items())
    header = (f'<p class="note">Run <code>{html.escape(str(run_dir))}</code> on dataset '
              f"<code>{html.escape(str(ds.path))}</code> ({html.escape(split or 'all rows')}, {n:,} galaxies). "
              'Tables: <a href="tables/">tables/</a>; predictions: <a href="predictions.parquet">'
              'predictions.parquet</a>; <a href="metrics.json">metrics.json</a>.</p>'
              f'<table class="data">{mrows}</table>')
    out = out_dir / "report.html"
    out.write_text(page.render(f"AstroVaDEr report: {run_dir.name}", header), encoding="utf-8")
    _log(progress, f"wrote {out}")
    return out
