"""Components that describe themselves: what the members of each mixture component look like, in numbers and
in one sentence, and which components group galaxies by something other than their shape.

The paper's central lesson is that unsupervised components need interpreting: its clusters followed
companions, size, orientation and surface brightness as well as morphology. For every component this module
measures (``analysis.morphology``) a seeded random sample of its members and, separately, its *core*: the
members it claims most confidently (its most probable 5%, at least 10 and at most 100). Two kinds of
component are flagged automatically:

* **companions**: at least ``companion_core_min`` of its members have a second source in the stamp, and at
  least ``companion_enrichment`` times the share among all measured galaxies. A component whose *core* is pairs
  but whose members mostly are not is not flagged: its sentence says "its most probable members are pairs". On
  the demo's simulation the face-on-disc component (87% face-on discs) had a core of 97% pairs, and flagging it
  by its core dismissed a real class.
* **orientation**: the elongated members' major axes point one way (mean resultant length of the doubled
  position angles at least ``orientation_min``) while the dataset's do not (at most ``orientation_all_max``).
  Derotated stamps all point one way, so the flag cannot fire on them.

Measurements are made on linear flux where the dataset records its display stretch, and statmorph fits
PSF-convolved Sersic profiles where it records its PSF (:mod:`astrovader.analysis.morphology`); the table's
``flux`` attribute says which ("linear" or "stored").

Words in the sentences compare a component's median with the terciles of all measured galaxies ("compact"
below the lower tercile of R50, "extended" above the upper), so they say how the components differ from each
other within one dataset, not how they compare with galaxies in general.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.analysis.metrics import gz_vote_classes
from astrovader.analysis.morphology import DEFAULT, MorphologySettings, measure, psf_image
from astrovader.data.dataset import Dataset
from astrovader.data.stretch import PixelStretch
from astrovader.errors import InputError
from astrovader.inference import Predictions
from astrovader.runs import Run

LABEL_COLUMNS = ("true_class", "gz1_label", "label")
FLAG_COMPANIONS = "companions"
FLAG_ORIENTATION = "orientation"

# table columns that hold a measurement, with their meaning and unit (written to CSV headers' metadata and the
# report's legend)
MEASURES: dict[str, str] = {
    "r50": "radius holding half the galaxy's light (px)",
    "r90": "radius holding 90% of the galaxy's light (px)",
    "r50_arcsec": "R50 in arcsec (where the dataset states its pixel scale)",
    "r90_arcsec": "R90 in arcsec",
    "concentration": "C = 5 log10(r80 / r20) (statmorph); higher is more centrally concentrated",
    "asymmetry": "rotational asymmetry A (statmorph); near 0 smooth, > 0.2 disturbed or clumpy",
    "gini": "Gini coefficient of the pixel fluxes (statmorph); high for light in few pixels",
    "m20": "M20, second moment of the brightest 20% of the light (statmorph); less negative for off-centre "
           "knots or bars",
    "sersic_n": "Sersic index of a single-Sersic fit (statmorph)",
    "axis_ratio": "minor / major axis of the galaxy's light (1 round, < 0.4 edge-on or very elongated)",
    "surface_brightness": "mean sky-subtracted flux per px inside R50 (linear flux in the dataset's units where it "
                          "records its stretch, else stored grey levels / 255)",
    "position_angle": "major axis, degrees anticlockwise from +x as the stamp is shown (row 0 at the top), 0-180",
    "companion_x": "second source's offset from the stamp centre, px, x to the right",
    "companion_y": "second source's offset from the stamp centre, px, y up (towards row 0)",
    "companion_x_arcsec": "companion_x in arcsec (where the dataset states its pixel scale)",
    "companion_y_arcsec": "companion_y in arcsec",
    "sersic_rhalf": "half-light radius of the Sersic fit (px; PSF-convolved fit where the dataset records its PSF)",
    "companion_fraction": "share of members with a second source in the stamp",
    "companion_fraction_core": "the same among the component's most probable members",
    "orientation_coherence": "how much the elongated members' major axes point one way (0 random, 1 aligned)",
}


@dataclass(frozen=True)
class DescribeSettings:
    """How many members are measured, and when a component is flagged."""

    n_core: int = 100  # most probable members measured as the component's core (at most) ...
    core_fraction: float = 0.05  # ... and at most this share of its members (at least 10)
    max_members: int = 400  # random members measured for the cheap (photutils) statistics
    n_detailed: int = 60  # of those, the members also given to statmorph (about 0.2 s each)
    companion_core_min: float = 0.5
    companion_enrichment: float = 2.0
    orientation_min: float = 0.5
    orientation_all_max: float = 0.25
    elongated_below: float = 0.7  # axis ratio under which a position angle means something
    seed: int = 0


def _coherence(position_angle: np.ndarray, axis_ratio: np.ndarray, elongated_below: float) -> float:
    ok = np.isfinite(position_angle) & (axis_ratio < elongated_below)
    if ok.sum() < 5:
        return np.nan
    return float(np.abs(np.exp(2j * np.deg2rad(position_angle[ok])).mean()))


def detect_label_column(catalog: pd.DataFrame, label_column: str | None = None) -> str | None:
    """The class-label column: the one asked for (which must exist), else the first of LABEL_COLUMNS."""
    if label_column is not None:
        if label_column not in catalog.columns:
            raise InputError(f"label column {label_column!r} is not in the catalogue; columns: "
                             f"{', '.join(map(str, catalog.columns))}")
        return label_column
    return next((c for c in LABEL_COLUMNS if c in catalog.columns), None)


def label_values(catalog: pd.DataFrame, label_column: str | None) -> pd.Series | None:
    """The per-galaxy label to show (class names where a simulated catalogue has them beside ``true_class``)."""
    if label_column is None:
        return None
    lab = catalog[label_column]
    if label_column == "true_class" and "class_name" in catalog.columns:
        lab = catalog["class_name"]
    return lab.astype("string")


def _words(row: pd.Series, terciles: dict[str, tuple[float, float]]) -> list[str]:
    """Adjectives for a component's medians against the dataset's terciles."""
    pairs = (("r50", "compact", "extended"), ("concentration", "diffuse", "concentrated"),
             ("surface_brightness", "low surface brightness", "high surface brightness"),
             ("asymmetry", "smooth", "asymmetric"))
    words = []
    for col, low, high in pairs:
        v = row.get(col, np.nan)
        if col not in terciles or not np.isfinite(v):
            continue
        lo, hi = terciles[col]
        if v < lo:
            words.append(low)
        elif v > hi:
            words.append(high)
    q = row.get("axis_ratio", np.nan)
    if np.isfinite(q):
        words.append("round" if q >= 0.8 else "elongated" if q < 0.6 else "")
    return [w for w in words if w]


def sentence(row: pd.Series, terciles: dict[str, tuple[float, float]]) -> str:
    """One sentence in words for one component's row of the description table."""
    if not row["n_members"]:
        return "no galaxy of this sample has it as its most probable component."
    words = _words(row, terciles)
    parts = [f"{', '.join(words) if words else 'typical in size, concentration and shape'}"]
    if isinstance(row.get("label_majority"), str):
        parts.append(f"{row['label_fraction']:.0%} {row['label_majority']}")
    if np.isfinite(row.get("gz_smooth_fraction", np.nan)):
        parts.append(f"{row['gz_smooth_fraction']:.0%} GZ smooth of the clean smooth/featured members")
    text = f"{row['share']:.0%} of the galaxies: " + "; ".join(parts)
    flags = str(row.get("flags", "") or "")
    if FLAG_COMPANIONS in flags:
        text += (f". {row['companion_fraction']:.0%} of its members have a second source in the stamp "
                 f"({row['companion_fraction_core']:.0%} of its most probable ones): grouped by companions, "
                 "probably not morphological")
    elif row.get("companion_fraction_core", 0) >= 0.5:
        text += (f". Its most probable members are pairs ({row['companion_fraction_core']:.0%} have a second "
                 f"source, against {row['companion_fraction']:.0%} of all its members)")
    if FLAG_ORIENTATION in flags:
        text += (f". Its elongated members point one way (coherence {row['orientation_coherence']:.2f}): grouped "
                 "by orientation on the sky, probably not morphological")
    return text + "."


@dataclass
class Description:
    """The description table (one row per component) and the per-galaxy measurements it was made from."""

    table: pd.DataFrame
    measurements: pd.DataFrame

    @property
    def non_morphological(self) -> list[int]:
        """Components flagged as grouped by companions or orientation."""
        return [int(c) for c in self.table.loc[~self.table["morphological"], "component"]]

    @property
    def companion_components(self) -> list[int]:
        return [int(c) for c in self.table.loc[self.table["flags"].str.contains(FLAG_COMPANIONS), "component"]]

    def sentences(self) -> list[str]:
        return [f"component {int(r.component)}: {r.sentence}" for r in self.table.itertuples()]


def describe_components(pred: Predictions, dataset: Dataset, catalog: pd.DataFrame | None = None, *,
                        weights: np.ndarray | None = None, label_column: str | None = None,
                        pixel_scale: float | None = None, settings: DescribeSettings = DescribeSettings(),
                        morphology: MorphologySettings = DEFAULT,
                        progress: bool = False) -> Description:
    """Describe every component of ``pred`` (predictions for dataset rows ``pred.rows``).

    ``catalog`` is the dataset catalogue of those rows (for labels and Galaxy Zoo votes), ``weights`` the
    mixture weights (K,), ``pixel_scale`` arcsec per pixel where known."""
    K = pred.probs.shape[1]
    labels = pred.labels
    rng = np.random.default_rng(settings.seed)
    catalog = dataset.catalog.iloc[pred.rows].reset_index(drop=True) if catalog is None else catalog
    label_column = detect_label_column(catalog, label_column)
    lab = label_values(catalog, label_column)
    gz = gz_vote_classes(catalog)

    stretch = PixelStretch.from_meta(dataset.meta)
    picks: list[tuple[int, str, np.ndarray]] = []  # (component, "core" | "sample", local positions)
    for c in range(K):
        members = np.flatnonzero(labels == c)
        n_core = min(settings.n_core, max(10, round(settings.core_fraction * len(members))))
        core = members[np.argsort(-pred.probs[members, c], kind="stable")][:n_core]
        sample = np.sort(rng.choice(members, min(settings.max_members, len(members)), replace=False))
        picks += [(c, "core", core), (c, "sample", sample)]
    local = np.unique(np.concatenate([p for _, _, p in picks]))
    detailed_local = np.unique(np.concatenate([
        rng.choice(p, min(settings.n_detailed, len(p)), replace=False) for _, kind, p in picks if kind == "sample"]))
    meas = _measure(dataset, pred.rows, local, np.isin(local, detailed_local), morphology, stretch, progress)
    meas.insert(0, "local", local)
    meas.insert(1, "id", catalog["id"].to_numpy()[local])
    meas.insert(2, "component", labels[local])
    if pixel_scale:
        for col in ("r50", "r90", "companion_x", "companion_y"):
            meas[f"{col}_arcsec"] = meas[col] * pixel_scale
    meas = meas.set_index("local", drop=False)

    all_sample = np.unique(np.concatenate([p for _, kind, p in picks if kind == "sample"]))
    ref = meas.loc[all_sample]
    terciles = {col: tuple(np.nanpercentile(ref[col], [100 / 3, 200 / 3])) for col in
                ("r50", "concentration", "surface_brightness", "asymmetry") if ref[col].notna().sum() >= 3}
    companion_all = float(ref["has_companion"].mean()) if len(ref) else np.nan
    coherence_all = _coherence(ref["position_angle"].to_numpy(), ref["axis_ratio"].to_numpy(),
                               settings.elongated_below)

    rows = []
    n_total = len(labels)
    for c in range(K):
        core = meas.loc[picks[2 * c][2]]
        smp = meas.loc[picks[2 * c + 1][2]]
        members = int((labels == c).sum())
        row: dict = {"component": c, "n_members": members, "share": members / n_total if n_total else np.nan,
                     "weight": float(weights[c]) if weights is not None else np.nan, "n_measured": len(smp)}
        for col in ("r50", "r90", "concentration", "asymmetry", "gini", "m20", "sersic_n", "axis_ratio",
                    "surface_brightness"):
            row[col] = float(np.nanmedian(smp[col])) if smp[col].notna().any() else np.nan
        if pixel_scale:
            row["r50_arcsec"], row["r90_arcsec"] = row["r50"] * pixel_scale, row["r90"] * pixel_scale
        row["companion_fraction"] = float(smp["has_companion"].mean()) if len(smp) else np.nan
        row["companion_fraction_core"] = float(core["has_companion"].mean()) if len(core) else np.nan
        row["orientation_coherence"] = _coherence(smp["position_angle"].to_numpy(), smp["axis_ratio"].to_numpy(),
                                                  settings.elongated_below)
        flags = []
        # Grouped by companions only when its members, not just its most probable ones, mostly have a second
        # source: the demo's face-on-disc component (87% face-on discs) put its densest region on pairs, and
        # flagging it for its core dismissed a real class (the sentence still mentions such a core).
        share = row["companion_fraction"]
        if share >= settings.companion_core_min and share >= settings.companion_enrichment * companion_all:
            flags.append(FLAG_COMPANIONS)
        if (np.isfinite(row["orientation_coherence"]) and row["orientation_coherence"] >= settings.orientation_min
                and not (coherence_all > settings.orientation_all_max)):
            flags.append(FLAG_ORIENTATION)
        row["flags"] = ",".join(flags)
        row["morphological"] = not flags
        row.update(_label_shares(labels == c, lab, gz))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["sentence"] = [sentence(r, terciles) for _, r in table.iterrows()]
    table.attrs.update(label_column=label_column or "", companion_fraction_all=companion_all,
                       flux="linear" if stretch is not None else "stored",
                       orientation_coherence_all=coherence_all, pixel_scale=pixel_scale or np.nan)
    return Description(table=table, measurements=meas.reset_index(drop=True))


def _measure(dataset: Dataset, rows: np.ndarray, local: np.ndarray, detailed: np.ndarray,
             morphology: MorphologySettings, stretch: PixelStretch | None, progress: bool) -> pd.DataFrame:
    """Measurements of the galaxies at positions ``local`` of ``rows`` (``detailed``: which also get statmorph's),
    read in blocks of 256 in row order, on linear flux where ``stretch`` is known and with the dataset's PSF."""
    from tqdm.auto import tqdm

    psf = psf_image(dataset.meta)
    frames = []
    with tqdm(total=len(local), desc="describe", unit="galaxy", disable=not progress, leave=False) as bar:
        for s in range(0, len(local), 256):
            part, deep = local[s:s + 256], detailed[s:s + 256]
            order = np.argsort(rows[part], kind="stable")  # the dataset reads rows in order
            imgs = np.empty((len(part), dataset.channels, dataset.image_size, dataset.image_size), np.uint8)
            imgs[order] = dataset.take(rows[part][order])
            frames.append(measure(imgs, detailed=deep, settings=morphology, stretch=stretch, psf=psf))
            bar.update(len(part))
    return pd.concat(frames, ignore_index=True)


def _label_shares(in_c: np.ndarray, lab: pd.Series | None, gz: pd.DataFrame | None) -> dict:
    """One component's majority label and its share, and its Galaxy Zoo smooth and edge-on fractions."""
    row: dict = {}
    if lab is not None:
        counts = lab[in_c].value_counts(dropna=True)
        row["label_majority"] = str(counts.index[0]) if len(counts) else None
        row["label_fraction"] = float(counts.iloc[0] / counts.sum()) if len(counts) else np.nan
    if gz is not None:
        clean = gz["smooth"].to_numpy()[in_c] | gz["featured"].to_numpy()[in_c]
        row["gz_smooth_fraction"] = float(gz["smooth"].to_numpy()[in_c][clean].mean()) if clean.any() else np.nan
        if "edge_on" in gz.columns:
            ft = gz["featured"].to_numpy()[in_c]
            row["gz_edge_on_fraction"] = float(gz["edge_on"].to_numpy()[in_c][ft].mean()) if ft.any() else np.nan
    return row


def pixel_scale_of(dataset: Dataset) -> float | None:
    """Arcsec per pixel of the stored stamps, where the dataset states one (simulated datasets do)."""
    v = dataset.meta.get("pixel_scale_arcsec")
    return float(v) if isinstance(v, int | float) and v > 0 else None


def override_flags(table: pd.DataFrame, non_morphological: Sequence[int]) -> pd.DataFrame:
    """The table with the user's list of non-morphological components in place of the automatic flags."""
    out = table.copy()
    nm = {int(c) for c in non_morphological}
    out["morphological"] = ~out["component"].isin(nm)
    out["flags"] = ["user" if c in nm else "" for c in out["component"]]
    return out


def training_overlap(run: Run, ids: np.ndarray) -> str:
    """A warning when some of the analysed galaxies ``ids`` are rows the run trained on (for example after the
    dataset's split was rewritten), else "". Runs that do not record their training rows give ""."""
    n = run.trained_on_rows(ids.tolist())
    if not n:
        return ""
    return (f"{n:,} of the {len(ids):,} galaxies analysed were in the run's training rows, so these numbers are "
            "not held out (was the split rewritten after training? `astrovader check RUN` says)")


def write_description_table(frame: pd.DataFrame, out: Path, metadata: dict[str, str] | None = None) -> Path:
    """``frame`` as CSV or Parquet (by suffix), written atomically; Parquet carries ``metadata`` in its schema, a CSV
    in a sidecar ``<out>.provenance.json``."""
    from astrovader.data.dataset import atomic_write_json, atomic_write_parquet
    from astrovader.data.outputs import write_csv

    if out.suffix.lower() == ".parquet":
        atomic_write_parquet(out, frame, metadata)
    else:
        write_csv(frame, out)
        if metadata:  # CSV has no room for it
            atomic_write_json(out.with_name(out.name + ".provenance.json"), metadata)
    return out


def describe_run(run: Run | str | Path, dataset: str | Path | Dataset, out: str | Path, *, split: str | None = None,
                 max_images: int | None = None, label_column: str | None = None,
                 settings: DescribeSettings = DescribeSettings(), device: str | None = None,
                 allow_unfinished: bool = False, overwrite: bool = False, command: str | None = None,
                 names: str | Path | None = None, progress: bool = True) -> Description:
    """Describe every component of a run on a dataset, and write the table and the per-galaxy measurements.

    The members of each component are measured on linear flux (photutils, GalSim adaptive moments, statmorph) and
    compared with the other components; components grouped by companions or orientation are flagged.

    Parameters
    ----------
    run : Run, str or path-like
        The trained run, or a run directory or pretrained model's name.
    dataset : path-like or Dataset
        The galaxies to describe.
    out : path-like
        ``.csv`` or ``.parquet``; the per-galaxy measurements go to ``OUT_galaxies`` beside it.
    split : str, optional
        Only the catalogue rows with this ``split`` value (for example "test").
    max_images : int, optional
        A seeded random subset of at most this many rows.
    label_column : str, optional
        A catalogue column of known classes to cross-tabulate (detected when omitted).
    settings : DescribeSettings
        How many members, core members and detailed (statmorph) measurements, and the seed.
    device : str, optional
        Where the network runs when ``run`` is a name.
    allow_unfinished : bool, default False
        Accept a run whose training has not finished.
    overwrite : bool, default False
        Replace existing outputs.
    command : str, optional
        The command line, recorded in the outputs' provenance.
    names : path-like, optional
        A ``component_names.json`` from the explorer: a ``component_name`` column.
    progress : bool, default True
        Show progress bars.

    Returns
    -------
    Description
        The table, the measurements, the sentences and the flagged components.
    """
    from astrovader.data.dataset import open_dataset
    from astrovader.data.selection import select_rows
    from astrovader.inference import infer
    from astrovader.predict import read_names
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"{out}: the description is written as .csv or .parquet; name the output accordingly")
    galaxies = out.with_name(f"{out.stem}_galaxies{out.suffix}")
    for path in (out, galaxies):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists; pass --overwrite to replace it, or choose another name")
    run = Run.open(run, device, allow_unfinished=allow_unfinished)
    cfg, net = run.config, run.network
    ds = open_dataset(dataset)
    rows = select_rows(ds, split, max_images, settings.seed)
    if len(rows) == 0:
        raise InputError("no images selected: the dataset (or the chosen split) is empty")
    leak = training_overlap(run, ds.ids[rows])
    if leak:
        print(f"astrovader describe: WARNING: {leak}", file=sys.stderr)
    pred = infer(net, ds, rows=rows, reconstruct=False, progress=progress)
    desc = describe_components(pred, ds, weights=net.gmm.weights.detach().cpu().numpy(),
                               label_column=label_column, pixel_scale=pixel_scale_of(ds), settings=settings,
                               progress=progress)
    meta = run.provenance(command)
    meta.update(DATASET=str(ds.path), SPLIT=split or "all", NROWS=str(len(rows)))
    if leak:
        meta["TRAINOVL"] = leak
    if names is not None:
        named = read_names(names, cfg.model.n_components, meta["WEIGHTS"])
        desc.table.insert(1, "component_name", [named.get(int(c), "") for c in desc.table["component"]])
        desc.measurements["component_name"] = [named.get(int(c), "") for c in desc.measurements["component"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_description_table(desc.table, out, meta)
    write_description_table(desc.measurements, galaxies, meta)
    return desc
