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

from astrovader.analysis import figures as figs
from astrovader.analysis import report_sections as sections
from astrovader.analysis.describe import (
    DescribeSettings,
    describe_components,
    detect_label_column,
    pixel_scale_of,
    training_overlap,
)
from astrovader.analysis.metrics import (
    METRIC_WORDS,
    sky_noise_variance,
)
from astrovader.analysis.page import Page
from astrovader.data.dataset import Dataset, open_dataset
from astrovader.data.locks import exclusive
from astrovader.data.outputs import remove_stale_temporaries, swap_in, temporary_name
from astrovader.data.selection import select_rows
from astrovader.errors import InputError
from astrovader.inference import infer
from astrovader.predict import prediction_table
from astrovader.runs import CONFIG, Run


def _fmt_metric(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "undefined (too few components with members)"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))




# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def make_report(run: Run | str | Path, dataset: str | Path | Dataset, out_dir: str | Path, split: str | None = None,
                cuts: Sequence[float] = (0.1, 0.5, 0.9), non_morphological: Sequence[int] | None = None,
                label_column: str | None = None, max_images: int | None = None, progress: bool = True,
                gz_cuts: dict[str, float] | None = None, seed: int = 0, device: str | None = None,
                allow_unfinished: bool = False, dpi: int = 110, vector: Sequence[str] = (),
                command: str | None = None, describe: DescribeSettings | None = None,
                overwrite: bool = False, n_realism: int = 300) -> Path:
    """Write the paper's section-5 analyses of a trained run on a dataset as one HTML page with its figures and tables.

    The report is built in a temporary folder beside ``out_dir`` and swapped in when complete, so a killed report
    never mixes new files with an old one.

    Parameters
    ----------
    run : Run, str or path-like
        The trained run, or a run directory or pretrained model's name.
    dataset : path-like or Dataset
        The galaxies to analyse.
    out_dir : path-like
        The report folder (``report.html``, ``figures/``, ``tables/``).
    split : str, optional
        Only catalogue rows with this ``split`` value; by default the ``test`` rows when the catalogue has them (the
        page says prominently when it falls back to all rows); "all" asks for every row.
    cuts : sequence of float, default (0.1, 0.5, 0.9)
        Probability cuts of Table 2.
    non_morphological : sequence of int, optional
        Components that group galaxies by something other than their shape (default: those ``describe`` flags).
    label_column : str, optional
        A catalogue column of known classes (detected when omitted).
    max_images : int, optional
        A seeded random subset of at most this many rows.
    progress : bool, default True
        Print progress.
    gz_cuts : dict of str to float, optional
        Galaxy Zoo clean-sample cuts to override.
    seed : int, default 0
        Seed of every random choice in the report.
    device : str, optional
        Where the network runs when ``run`` is a name.
    allow_unfinished : bool, default False
        Accept a run whose training has not finished.
    dpi : int, default 110
        Resolution of the PNG figures.
    vector : sequence of str, default ()
        Also write each figure in these formats ("pdf", "svg").
    command : str, optional
        The command line, recorded in the report's provenance.
    describe : DescribeSettings, optional
        Settings of the component descriptions.
    overwrite : bool, default False
        Replace a non-empty ``out_dir``.
    n_realism : int, default 300
        Synthetic galaxies measured against as many held-out real ones (0 skips that section).

    Returns
    -------
    pathlib.Path
        ``out_dir / "report.html"``.
    """
    run = Run.open(run, device, allow_unfinished=allow_unfinished)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; a report is a folder (report.html, figures/, tables/)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists and is not empty; pass --overwrite to replace it, or "
                              "choose another folder")
    with exclusive(out_dir):
        remove_stale_temporaries(out_dir)  # the half-built folder of a killed report
        tmp = temporary_name(out_dir, "")
        try:
            with figs.figure_output(dpi, vector):
                _make_report(run, dataset, tmp, split, cuts, non_morphological, label_column,
                             max_images, progress, gz_cuts, seed, command,
                             describe or DescribeSettings(seed=seed), shown_dir=out_dir, n_realism=n_realism)
            swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sections.log(progress, f"wrote {out_dir / 'report.html'}")
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


def _make_report(run: Run, dataset: str | Path | Dataset, out_dir: Path, split: str | None,
                 cuts: Sequence[float], non_morphological: Sequence[int] | None, label_column: str | None,
                 max_images: int | None, progress: bool, gz_cuts: dict[str, float] | None, seed: int,
                 command: str | None,
                 describe: DescribeSettings, shown_dir: Path, n_realism: int = 300) -> Path:
    cuts = tuple(float(c) for c in cuts)
    if any(not 0 <= c < 1 for c in cuts):
        raise InputError(f"probability cuts must lie in [0, 1), got {cuts}")
    cfg = run.config
    ds = open_dataset(dataset)
    K = cfg.model.n_components
    if non_morphological is not None and any(int(c) < 0 or int(c) >= K for c in non_morphological):
        raise InputError(f"--non-morphological components must be in 0..{K - 1}, got {list(non_morphological)}")
    for sub in ("figures", "tables"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    prov = run.provenance(command)
    ctx, rows_text, split = _analyse(run, ds, out_dir, split, max_images, seed, progress, describe,
                                     label_column, non_morphological, prov)
    sections.components(ctx)
    sections.reconstructions(ctx)
    sections.statistics(ctx, cuts)
    sections.overlap(ctx)
    sections.members(ctx)
    sections.secondary(ctx)
    sections.latent_space(ctx)
    sections.labels(ctx, gz_cuts)
    sections.history(ctx)
    sections.synthetic(ctx)
    sections.synthetic_realism(ctx, n_realism)
    (out_dir / "metrics.json").write_text(json.dumps({**ctx.metrics, "provenance": prov}, indent=2, default=float)
                                          + "\n")
    _config_and_next_steps(ctx, split, shown_dir)
    sections.summary(ctx, rows_text)
    where = run.path.resolve()
    name = where.name if where.name not in ("run", "model") else f"{where.parent.name}/{where.name}"
    out = out_dir / "report.html"
    out.write_text(ctx.page.render(f"AstroVaDEr report: {name}", _header(ctx, prov, rows_text, command)),
                   encoding="utf-8")
    return out


def _analyse(run: Run, ds: Dataset, out_dir: Path, split: str | None,
             max_images: int | None, seed: int, progress: bool, describe: DescribeSettings,
             label_column: str | None, non_morphological: Sequence[int] | None,
             prov: dict[str, str]) -> tuple[sections.ReportContext, str, str | None]:
    """The analysed rows, their predictions (written to predictions.parquet), the first metrics and the
    description of every component: the context all sections read. Also returns the sentence saying which rows
    were analysed and the split used."""
    import pyarrow.parquet as pq

    split, rows_note = _rows_used(ds, split)
    rows = select_rows(ds, split, max_images, seed)
    leak = training_overlap(run, ds.ids[rows])
    if leak:  # the banner must not call training galaxies held out
        rows_note = f"{rows_note.replace(', held out from training', '')}. WARNING: {leak}"
        print(f"astrovader report: WARNING: {leak}", file=sys.stderr)
    sections.log(progress, f"inference on {len(rows):,} images ({rows_note})")
    if len(rows) == 0:
        raise InputError("no images selected: the dataset (or the chosen split) is empty")
    net = run.network
    pred = infer(net, ds, rows=rows, progress=progress)
    catalog = ds.catalog.iloc[rows].reset_index(drop=True)
    table = prediction_table(catalog["id"].to_numpy(), pred.as_dict())
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **prov}),
                   out_dir / "predictions.parquet")
    rng = np.random.default_rng(seed)
    rows_text = f"{rows_note}; {len(rows):,} galaxies" + (f" (a random {max_images:,})" if max_images else "")
    metrics: dict[str, Any] = {"run_dir": run.name, "dataset": str(ds.path), "split": split or "all",
                               "rows": rows_text, "n_objects": int(len(rows)),
                               "n_components": net.cfg.model.n_components, "latent_dim": net.cfg.model.latent_dim,
                               "mean_recon_mse": float(pred.recon_mse.mean()),
                               "median_recon_mse": float(np.median(pred.recon_mse))}
    metrics["sky_noise_variance"] = sky_noise_variance(ds.take(np.sort(rng.choice(rows, min(500, len(rows)),
                                                                                  replace=False))))
    metrics["recon_mse_over_noise"] = metrics["mean_recon_mse"] / metrics["sky_noise_variance"] \
        if metrics["sky_noise_variance"] > 0 else float("nan")
    stretch = ds.meta.get("stretch") or (ds.meta.get("preprocessing") or {}).get("stretch")
    stretch_text = (f"the dataset's stretch ({html.escape(str(stretch))})" if stretch else
                    "the stretch of the images as ingested, for SDSS JPEGs the survey's asinh colour stretch")
    given = tuple(sorted({int(c) for c in non_morphological})) if non_morphological is not None else None
    ctx = sections.ReportContext(run=run, ds=ds, pred=pred, catalog=catalog, page=Page(out_dir),
                                 out_dir=out_dir, rng=rng, seed=seed, progress=progress, metrics=metrics,
                                 stretch_text=stretch_text, label_col=detect_label_column(ds.catalog, label_column),
                                 describe=describe, non_morphological=given)
    sections.log(progress, "describing the components")
    ctx.desc = describe_components(pred, ds, catalog, weights=net.gmm.weights.detach().cpu().numpy(),
                                   label_column=ctx.label_col, pixel_scale=pixel_scale_of(ds), settings=describe)
    ctx.nm = given if given is not None else tuple(ctx.desc.non_morphological)
    metrics["non_morphological"] = ("components " + ", ".join(map(str, ctx.nm))) if ctx.nm else "none"
    return ctx, rows_text, split


def _config_and_next_steps(ctx: sections.ReportContext, split: str | None, shown_dir: Path) -> None:
    """The run's config.toml, and the commands that take the analysis further with this run filled in."""
    page, ds = ctx.page, ctx.ds
    page.section("config", "Run configuration",
                 "The run's config.toml as used for training: every setting that made this model.")
    cfg_path = ctx.run.path / CONFIG
    page.raw(f"<pre>{html.escape(cfg_path.read_text() if cfg_path.is_file() else '(no config.toml)')}</pre>")
    page.section("next", "Next steps",
                 "Commands that take this analysis further, with this report's run and dataset filled in.")
    rd, dd = html.escape(ctx.run.name), html.escape(str(ds.path))
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


def _header(ctx: sections.ReportContext, prov: dict[str, str], rows_text: str, command: str | None) -> str:
    """The banner saying which galaxies were analysed, what made the report, and the table of every metric."""
    def metric_row(k: str, v: Any) -> str:
        name, what = METRIC_WORDS.get(k, (k, ""))
        return (f"<tr><th>{html.escape(name)}</th><td>{_fmt_metric(v)}</td><td class='note'>{html.escape(what)}"
                "</td></tr>")

    rd, dd = html.escape(ctx.run.name), html.escape(str(ctx.ds.path))
    shown = {k: v for k, v in ctx.metrics.items() if k not in ("run_dir", "dataset", "split")}
    return (f'<p class="banner">Galaxies analysed: {html.escape(rows_text)}.</p>'
            f'<p class="note">astrovader {html.escape(prov["ASTROVER"])}, made {html.escape(prov["DATE"])} UTC '
            f'by <code>{html.escape(command or "make_report(...)")}</code>. Run <code>{rd}</code> (weights '
            f'sha256 {html.escape(prov["WEIGHTS"])}, trained with train.seed = {html.escape(prov["SEED"])}), '
            f'dataset <code>{dd}</code>. Tables: '
            '<a href="tables/">tables/</a>; predictions: <a href="predictions.parquet">predictions.parquet</a>; '
            '<a href="metrics.json">metrics.json</a>.</p>'
            '<table class="data metrics"><tr><th>measure</th><th>value</th><th>what it means</th></tr>'
            + "".join(metric_row(k, v) for k, v in shown.items()) + "</table>")
