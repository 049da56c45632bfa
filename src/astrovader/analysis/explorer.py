"""The cluster explorer: one self-contained interactive page (``explorer.html``) to browse a run's latent space,
compare its components and name them.

The page opens from disk with no server and no network: Bokeh's JavaScript is inlined, every image is a data
URI, and the page's own behaviour is ``explorer.js`` beside this module. It holds

* a 2-D map of the latent means (UMAP, computed once here) with one point per galaxy coloured by component;
  hovering shows the galaxy's cut-out, its reconstruction and its top probabilities, a click pins it, and the
  map zooms and pans;
* filters by probability, by label and by any numeric catalogue column;
* one panel per component: its description (``analysis.describe``), weight, most probable and random members,
  synthetic galaxies drawn from it, a traversal along its main latent direction and its labels; two panels side
  by side for comparison;
* a name and a note per component, kept in the browser's local storage and exported as
  ``component_names.json``, which ``astrovader predict --names`` and ``describe --names`` turn into a
  ``component_name`` column.

Cut-outs and reconstructions travel as two JPEG sprite sheets (one tile per galaxy), downsampled by whole-pixel
block means when the page would otherwise grow past ``max_pixels``; beyond ``max_points`` galaxies a seeded
random sample is shown and the page says so.
"""

from __future__ import annotations

import base64
import html
import io
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis.describe import (
    DescribeSettings,
    Description,
    describe_components,
    detect_label_column,
    label_values,
    pixel_scale_of,
)
from astrovader.analysis.figures import cluster_colors
from astrovader.analysis.latent_map import latent_map
from astrovader.analysis.page import script_json
from astrovader.data.dataset import Dataset, atomic_write_bytes, open_dataset
from astrovader.data.grids import png_grid
from astrovader.inference import Predictions, decode, infer, reconstruct
from astrovader.model import AstroVaDErNet
from astrovader.runs import Run
from astrovader.sampling import gallery

SPRITE_COLS = 100
TILE_DISPLAY = 112  # px on screen for the hovered and pinned galaxy
N_PANEL = 12  # galaxies per row of a component panel


def _block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return images
    n, c, h, w = images.shape
    return images.reshape(n, c, h // factor, factor, w // factor, factor).mean((3, 5))


def _data_uri(image, fmt: str, **save: Any) -> str:
    """A Pillow image as a data URI in ``fmt`` ("PNG", "JPEG")."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _sprite(images: np.ndarray, quality: int = 90) -> str:
    """uint8 (N, C, s, s) tiles, edge to edge in a JPEG of ``SPRITE_COLS`` columns, as a data URI."""
    return _data_uri(png_grid(images, ncols=SPRITE_COLS, gap=0), "JPEG", quality=quality)


def _png_uri(images: np.ndarray, ncols: int, labels: list[str] | None = None) -> str:
    """float [0, 1] images (N, C, H, W) as one PNG grid data URI, tiles enlarged to about 64 px."""
    u8 = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return _data_uri(png_grid(u8, ncols=ncols, scale=max(1, 64 // images.shape[-1]), labels=labels), "PNG")


def main_direction(net: AstroVaDErNet, k: int, steps: int = 9, span: float = 2.0) -> np.ndarray:
    """Decoded images along component ``k``'s main axis: mu_k + t sqrt(lambda_1) v_1, t from -span to +span."""
    g = net.gmm
    mu = g.means.detach().double().cpu().numpy()[k]
    if net.cfg.model.covariance == "full":
        L = g.scale_tril.detach().double().cpu().numpy()[k]
        vals, vecs = np.linalg.eigh(L @ L.T)
        lam, v = vals[-1], vecs[:, -1]
    else:
        var = g.variances.detach().double().cpu().numpy()[k]
        j = int(np.argmax(var))
        lam, v = var[j], np.eye(len(var))[j]
    t = np.linspace(-span, span, steps)
    return decode(net, (mu[None] + t[:, None] * np.sqrt(lam) * v[None]).astype(np.float32))


def _top(probs: np.ndarray, n: int = 3) -> list[str]:
    order = np.argsort(-probs, axis=1)[:, :n]
    return [", ".join(f"{k}: {p[k]:.2f}" for k in o) for o, p in zip(order, probs, strict=True)]


def _panel(k: int, row: pd.Series, pred: Predictions, ds: Dataset, net: AstroVaDErNet, synthetic: np.ndarray,
           labels: pd.Series | None, rng: np.random.Generator) -> str:
    members = np.flatnonzero(pred.labels == k)
    top = members[np.argsort(-pred.probs[members, k], kind="stable")][:N_PANEL]
    rand = np.sort(rng.choice(members, min(N_PANEL, len(members)), replace=False)) if len(members) else members

    def inputs(local: np.ndarray) -> np.ndarray:
        return ds.take(pred.rows[np.sort(local)]).astype(np.float32) / 255.0 if len(local) else np.zeros(0)

    def figure(title: str, imgs: np.ndarray, caps: list[str] | None = None) -> str:
        if len(imgs) == 0:
            return f"<figure><figcaption>{html.escape(title)}: none</figcaption></figure>"
        return (f'<figure><img src="{_png_uri(imgs, N_PANEL, caps)}" alt="{html.escape(title)}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>")

    top_sorted = np.sort(top)
    numbers = [("members", f"{int(row['n_members']):,} ({row['share']:.0%})"), ("weight", f"{row['weight']:.3f}")]
    for col, name in (("r50", "R50 (px)"), ("concentration", "concentration"), ("asymmetry", "asymmetry"),
                      ("axis_ratio", "axis ratio"), ("companion_fraction", "with a second source"),
                      ("companion_fraction_core", "... among the most probable")):
        if col in row and pd.notna(row[col]):
            numbers.append((name, f"{row[col]:.2f}"))
    label_text = ""
    if labels is not None and len(members):
        counts = labels.iloc[members].value_counts()
        label_text = "<p class='note'>Labels: " + ", ".join(
            f"{html.escape(str(v))} {n:,} ({n / counts.sum():.0%})" for v, n in counts.head(6).items()) + "</p>"
    flag = " <span class='flag'>[not morphological]</span>" if not row["morphological"] else ""
    return (f'<section class="comp" id="comp-{k}" data-c="{k}">'
            f'<h3><span class="swatch" style="background:{_hex(k, len(synthetic))}"></span>Component {k}'
            f'<span class="cname" data-c="{k}"></span>{flag}</h3>'
            f"<p>{html.escape(str(row['sentence']))}</p>"
            '<table class="data">' + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>"
                                             for a, b in numbers) + "</table>" + label_text
            + figure("most probable members", inputs(top_sorted),
                     [f"{pred.probs[i, k]:.2f}" for i in top_sorted])
            + figure("random members", inputs(rand))
            + figure("synthetic galaxies drawn from this component", synthetic[k])
            + figure("along the component's main latent direction (-2 to +2 sigma)", main_direction(net, k))
            + f'<div class="naming"><label>Name <input class="name" data-c="{k}" placeholder="e.g. smooth, round">'
            f'</label><label>Note <textarea class="note" data-c="{k}" rows="2"></textarea></label></div></section>')


def _category_columns(catalog: pd.DataFrame, max_values: int = 50) -> list[str]:
    """Catalogue columns to filter by value: booleans, and text columns with few distinct values (split, class
    names, flags), ``split`` first."""
    out = []
    for c in catalog.columns:
        col = catalog[c]
        if c == "id" or pd.api.types.is_float_dtype(col) or (pd.api.types.is_integer_dtype(col)
                                                             and not pd.api.types.is_bool_dtype(col)):
            continue
        if pd.api.types.is_bool_dtype(col) or col.nunique(dropna=True) <= max_values:
            out.append(str(c))
    return sorted(out, key=lambda c: c != "split")[:20]


def _hex(k: int, K: int) -> str:
    r, g, b, _ = cluster_colors(K)[k]
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _map(frame: pd.DataFrame, K: int):
    """The Bokeh map: a scatter of the 2-D embedding with a BooleanFilter for the page's filters."""
    from bokeh.models import BooleanFilter, CDSView, ColumnDataSource, CustomJS, HoverTool, TapTool, WheelZoomTool
    from bokeh.plotting import figure

    source = ColumnDataSource({c: frame[c].to_numpy() for c in frame.columns}, name="galaxies")
    shown = BooleanFilter(booleans=[True] * len(frame), name="shown")
    p = figure(width=760, height=620, tools="pan,box_zoom,reset", toolbar_location="above", name="map",
               min_border=0, title="Latent space (UMAP of the latent means): hover a galaxy, click to pin it")
    p.axis.visible = False
    p.grid.visible = False
    size = 7 if len(frame) < 3000 else 4
    # no Bokeh legend: its grouped items point at one row each and vanish when the filters hide that row; the
    # page draws the legend beside the map instead
    p.scatter("x", "y", source=source, view=CDSView(filter=shown), color="color", size=size, alpha=0.75,
              line_color=None, nonselection_alpha=0.75, selection_line_color="black", selection_line_width=2)
    hover = HoverTool(tooltips=None, callback=CustomJS(
        code="const i = cb_data.index.indices; if (i.length && window.AVshow) AVshow(i[0], false);"))
    wheel = WheelZoomTool()
    p.add_tools(hover, TapTool(), wheel)
    p.toolbar.active_scroll = wheel
    source.selected.js_on_change("indices", CustomJS(args={"s": source}, code=(
        "const i = s.selected.indices; if (i.length && window.AVshow) AVshow(i[0], true);")))
    return p


def build_explorer(net: AstroVaDErNet, ds: Dataset, pred: Predictions, description: Description,
                   run_info: dict[str, str], *, label_column: str | None = None, n_total: int | None = None,
                   max_pixels: float = 40e6, seed: int = 0, log: Callable[[str], None] | None = None) -> str:
    """The explorer page's HTML for predictions ``pred`` of dataset rows ``pred.rows``; ``log`` is told each
    step as it starts."""
    log = log or (lambda message: None)
    from bokeh.embed import components
    from bokeh.resources import INLINE

    K = pred.probs.shape[1]
    n = len(pred.rows)
    catalog = ds.catalog.iloc[pred.rows].reset_index(drop=True)
    log(f"latent map (UMAP of {n:,} galaxies)")
    xy = latent_map(pred.mu, seed)
    log("reconstructions and thumbnails")
    raw = ds.take(pred.rows)
    rec = np.clip(np.rint(reconstruct(net, raw) * 255), 0, 255).astype(np.uint8)
    factor = 1
    while (ds.image_size // factor > 64 or 2 * n * (ds.image_size // factor) ** 2 > max_pixels) \
            and ds.image_size % (2 * factor) == 0 and ds.image_size // factor > 8:
        factor *= 2
    thumbs_in = np.rint(_block_mean(raw.astype(np.float32), factor)).astype(np.uint8)
    thumbs_rec = np.rint(_block_mean(rec.astype(np.float32), factor)).astype(np.uint8)
    colors = [_hex(k, K) for k in range(K)]
    labels = label_values(catalog, label_column)
    labels = None if labels is None else labels.fillna("").astype(str)
    frame = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "id": catalog["id"].astype(str).to_numpy(),
                          "component": pred.labels,
                          "color": [colors[c] for c in pred.labels], "max_prob": pred.probs.max(1),
                          "top": _top(pred.probs), "sprite": np.arange(n),
                          "label": labels.to_numpy() if labels is not None else [""] * n})
    numeric = [c for c in catalog.columns if c not in ("id", "split") and pd.api.types.is_numeric_dtype(catalog[c])
               and not pd.api.types.is_bool_dtype(catalog[c])][:20]
    for c in numeric:
        frame[f"col_{c}"] = catalog[c].to_numpy(dtype=float)
    frame["recon_mse"] = pred.recon_mse
    categories = _category_columns(catalog)
    for c in categories:
        frame[f"cat_{c}"] = catalog[c].astype(object).where(catalog[c].notna(), "(missing)").astype(str).to_numpy()
    log("the page: map, component panels, filters")
    script, div = components(_map(frame, K))

    rng = np.random.default_rng(seed)
    synthetic, _ = gallery(net, N_PANEL, seed=seed)
    table = description.table
    panels = "".join(_panel(k, table.iloc[k], pred, ds, net, synthetic, labels, rng) for k in range(K))
    rd, wh = html.escape(run_info.get("RUNDIR", "")), html.escape(run_info.get("WEIGHTS", ""))
    av = {"run": run_info.get("RUNDIR", ""), "weights": run_info.get("WEIGHTS", ""), "n_components": K,
          "sprite_cols": SPRITE_COLS, "tile_display": TILE_DISPLAY, "label_column": label_column or ""}
    legend = "".join(f'<div><span class="swatch" style="background:{colors[k]}"></span>component {k}'
                     f'<span class="cname" data-c="{k}"></span></div>' for k in range(K))
    options = "".join(f'<option value="{k}">component {k}</option>' for k in range(K))
    options_b = options.replace('value="1"', 'value="1" selected', 1)
    label_opts = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>'
                         for v in (sorted(set(labels)) if labels is not None else []))
    col_opts = "".join(f'<option value="col_{html.escape(c)}">{html.escape(c)}</option>' for c in numeric)
    col_opts += '<option value="recon_mse">recon_mse</option>'
    cat_opts = "".join(f'<option value="cat_{html.escape(c)}">{html.escape(c)}</option>' for c in categories
                       if c != "split")
    splits = sorted(frame["cat_split"].unique()) if "cat_split" in frame else []
    default_split = "test" if "test" in splits else ""  # the rows the report analyses by default
    split_opts = "".join(f'<option value="{html.escape(v)}"{" selected" if v == default_split else ""}>'
                         f'{html.escape(v)}</option>' for v in splits)
    split_filter = (f"<label>split <select id='f-split'><option value=''>all</option>{split_opts}</select></label>"
                    if splits else "<select id='f-split' hidden><option value=''></option></select>")
    sampled = (f" A seeded random sample of {n:,} of the {n_total:,} galaxies is shown (the page stays responsive "
               "up to about 20,000); every panel and number uses the same sample." if n_total and n_total > n else "")
    css = _css(_sprite(thumbs_in), _sprite(thumbs_rec))
    js = files("astrovader.analysis").joinpath("explorer.js").read_text(encoding="utf-8")
    card = ('<div class="card" id="{0}" hidden><b>{1}</b><div class="tiles"><div class="input" title="input">'
            '</div><div class="recon" title="reconstruction"></div></div><div class="text"></div></div>')
    where = Path(run_info.get("RUNDIR", "run"))
    name = where.name if where.name not in ("run", "model") else f"{where.parent.name}/{where.name}"
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
            f"<title>astrovader explorer: {html.escape(name)}</title>"
            f"{INLINE.render()}<style>{css}</style></head><body>"
            f"<h1>astrovader explorer: {html.escape(name)}</h1>"
            f"<p class='banner'>{n:,} galaxies of <code>{html.escape(str(ds.path))}</code> in {K} components; run "
            f"<code>{rd}</code> (weights {wh}), astrovader {html.escape(run_info.get('ASTROVER', ''))}, "
            f"{html.escape(run_info.get('DATE', ''))} UTC."
            f"{sampled}</p><p class='note'>The map places galaxies with similar latent means together (UMAP: "
            "neighbourhoods are meaningful, distances and sizes are not). Hover a point to see the galaxy and its "
            "reconstruction (grey levels as stored, enlarged with whole pixels), click to pin it. Below: filters, "
            "a side-by-side comparison, and one panel per component where you can name it; the names stay in this "
            "browser until you export them.</p>"
            f"<div id='top'><div>{div}</div><div><div class='legend'>{legend}</div>"
            f"{card.format('hovered', 'under the pointer')}"
            f"{card.format('pinned', 'pinned (click)')}</div></div>"
            f"{_filters(label_opts, col_opts, cat_opts, split_filter, n)}"
            f"<h2>Compare two components</h2><p><select id='cmp-a'>{options}</select> with "
            f"<select id='cmp-b'>{options_b}</select></p>"
            "<div id='compare-panels'></div>"
            "<h2>Components</h2><p><button id='export'>Export names as component_names.json</button> "
            "<span class='note'>then <code>astrovader predict RUN DATASET OUT --names component_names.json</code> "
            "adds a component_name column.</span></p>"
            f"{panels}{script}<script>window.AV = {script_json(av)};</script><script>{js}</script></body></html>\n")


def _css(sprite_in: str, sprite_rec: str) -> str:
    """The page's style; the two sprite sheets (data URIs) are the tiles' backgrounds."""
    return f"""
body{{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1320px;padding:0 1.2em 3em;
color:#222;line-height:1.4}}h1{{border-bottom:2px solid #333}}.note{{color:#555;font-size:.9em}}
.banner{{background:#fff4d6;border:1px solid #e0b84c;padding:.5em 1em}}
#top{{display:flex;gap:1em;align-items:flex-start}}
.card{{border:1px solid #ccc;border-radius:4px;padding:.5em;width:260px;margin-bottom:.8em;font-size:.85em}}
.card .tiles{{display:flex;gap:6px}}.card .tiles div{{width:{TILE_DISPLAY}px;height:{TILE_DISPLAY}px;
filter:brightness(var(--tile-bright,1));
image-rendering:pixelated;background-repeat:no-repeat;border:1px solid #999}}
.card .text{{white-space:pre-line;margin-top:.3em}}.input{{background-image:url({sprite_in})}}
.recon{{background-image:url({sprite_rec})}}#filters{{display:flex;flex-wrap:wrap;gap:1.2em;margin:.8em 0;
padding:.5em;background:#f4f7fb}}section.comp{{border-top:1px solid #bbb;padding:.3em 0 1em}}
#compare-panels{{display:grid;grid-template-columns:1fr 1fr;gap:1em}}#compare-panels section{{font-size:.85em}}
figure{{margin:.5em 0}}figure img{{max-width:100%;image-rendering:pixelated;
filter:brightness(var(--tile-bright,1))}}figcaption{{font-size:.85em;color:#555}}
table.data{{border-collapse:collapse;font-size:.85em}}table.data th,table.data td{{border:1px solid #ccc;
padding:.1em .5em;text-align:left}}.swatch{{display:inline-block;width:.8em;height:.8em;margin-right:.4em}}
.flag{{color:#a33}}
.legend{{font-size:.85em;margin-bottom:.8em}}.naming label{{display:block;margin:.3em 0}}.naming input{{width:20em}}
.naming textarea{{width:40em;max-width:100%}}
"""


def _filters(label_opts: str, col_opts: str, cat_opts: str, split_filter: str, n: int) -> str:
    """The filter bar: probability, label, a numeric range, a category value, the split, tile brightness."""
    return (
        "<div id='filters'><label>min. probability <input id='f-prob' type='range' min='0' max='1' step='0.01' "
        "value='0'> <span id='f-prob-value'>0.00</span></label>"
        f"<label>label <select id='f-label'><option value=''>all</option>{label_opts}</select></label>"
        f"<label>column <select id='f-column'><option value=''>none</option>{col_opts}</select></label>"
        "<label>from <input id='f-min' type='number' step='any' style='width:7em'></label>"
        "<label>to <input id='f-max' type='number' step='any' style='width:7em'></label>"
        f"<label>category <select id='f-cat'><option value=''>none</option>{cat_opts}</select></label>"
        "<label>is <select id='f-cat-value'><option value=''>any</option></select></label>"
        f"{split_filter}"
        "<label>tile brightness <input id='f-bright' type='range' min='1' max='8' step='0.5' value='1'></label>"
        f"<span>shown: <b id='f-count'>{n:,}</b> of {n:,}</span>"
        "<span class='note'>A range keeps only galaxies with a value in it (missing values are left out).</span>"
        "</div>")


def explorer_rows(n: int, max_points: int, seed: int) -> np.ndarray:
    """The dataset rows the explorer page shows: all ``n``, or a seeded sample of ``max_points``."""
    rows = np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False)) if n > max_points else rows


def explorer_description(net: AstroVaDErNet, ds: Dataset, pred: Predictions, *, seed: int = 0,
                         label_column: str | None = None, settings: DescribeSettings | None = None,
                         progress: bool = False) -> Description:
    """The component descriptions the explorer page shows for predictions ``pred`` (its rows)."""
    return describe_components(pred, ds, weights=net.gmm.weights.detach().cpu().numpy(),
                               label_column=detect_label_column(ds.catalog, label_column),
                               pixel_scale=pixel_scale_of(ds), progress=progress,
                               settings=settings or DescribeSettings(max_members=200, n_detailed=20, seed=seed))


def write_explorer(run: Run | str | Path, dataset: str | Path | Dataset, out: str | Path, *,
                   pred: Predictions | None = None, max_points: int = 20000, label_column: str | None = None,
                   describe: DescribeSettings | None = None, seed: int = 0, command: str | None = None,
                   progress: bool = False, description: Description | None = None) -> Path:
    """Write the self-contained cluster explorer page for a run on a dataset.

    Parameters
    ----------
    run : Run, str or path-like
        The trained run, or a run directory or pretrained model's name.
    dataset : path-like or Dataset
        The galaxies to show.
    out : path-like
        The HTML file.
    pred : Predictions, optional
        Predictions already made for the shown rows (reused).
    max_points : int, default 20000
        At most this many galaxies, a seeded random sample beyond that.
    label_column : str, optional
        A catalogue column of known classes (detected when omitted).
    describe : DescribeSettings, optional
        Settings of the component descriptions.
    seed : int, default 0
        Seed of the sample and the descriptions.
    command : str, optional
        The command line, recorded in the page's provenance.
    progress : bool, default False
        Announce each step on stderr.
    description : Description, optional
        The components' description of the shown rows (reused).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    run = Run.open(run, "cpu")
    net = run.network

    def log(message: str) -> None:
        if progress:
            print(f"[explore] {message}", file=sys.stderr, flush=True)

    ds = open_dataset(dataset)
    rows = explorer_rows(len(ds), max_points, seed)
    if pred is None or len(pred.rows) != len(rows) or not np.array_equal(pred.rows, rows):
        pred = infer(net, ds, rows=rows, progress=progress)
    label_column = detect_label_column(ds.catalog, label_column)
    if description is None:
        log(f"describing the components ({len(rows):,} galaxies)")
        description = explorer_description(net, ds, pred, seed=seed, label_column=label_column, settings=describe,
                                           progress=progress)
    page = build_explorer(net, ds, pred, description, run.provenance(command),
                          label_column=label_column, n_total=len(ds), seed=seed, log=log)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
