"""Data commands: ingest (images -> packed dataset), split (train/validation/test), download (SDSS cut-outs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from astrovader.cli import CLIError
from astrovader.cli.options import add_dataset, add_overwrite, add_quiet, non_negative_float, positive_int


# ------------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from astrovader.data.ingest import ingest_folder
    from astrovader.data.sources import SOURCES
    from astrovader.data.stamps import DEFAULT_SIZE, FLUX_LEVEL

    if args.source not in SOURCES:
        raise CLIError(f"--source must be one of {', '.join(SOURCES)}, got {args.source!r}")
    if args.source != "gz2" and (args.catalog or args.mapping):
        raise CLIError("--catalog and --mapping are only used with --source gz2")
    if args.source == "gz2" and not (args.catalog and args.mapping):
        raise CLIError("--source gz2 needs both --catalog (gz2_hart16.csv or .fits) and --mapping "
                       "(gz2_filename_mapping.csv)")
    if args.crop is not None and args.crop_px is not None:
        raise CLIError("give either --crop (fraction) or --crop-px (pixels), not both")
    crop, crop_px, size, colour = args.crop, args.crop_px, args.size, args.colour
    derotate, flux_norm = args.derotate, args.flux_norm
    if args.preset:  # the preset's stamp recipe, under any option given explicitly
        from astrovader.errors import ConfigError
        from astrovader.presets import get_preset

        try:
            stamps = get_preset(args.preset).stamps
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
        if stamps is None:
            raise CLIError(f"preset {args.preset!r} has no stamp recipe (it is not for survey images); "
                           "see `astrovader presets`")
        if crop is None and crop_px is None:
            crop = stamps["crop"]
        size = size or stamps["size"]
        colour = colour or stamps["colour"]
        derotate = derotate or stamps["derotate"]
        flux_norm = flux_norm or stamps["flux_norm"]
    report = ingest_folder(args.src, args.out, labels=args.labels, id_column=args.id_column, crop=crop,
                           crop_px=crop_px, size=size or DEFAULT_SIZE, colour=colour,
                           workers=args.workers, append=args.append, progress=not args.quiet,
                           labels_only=args.labels_only, source=args.source, catalog=args.catalog,
                           mapping=args.mapping, log=lambda m: print(m, file=sys.stderr),
                           derotate=derotate, flux_level=FLUX_LEVEL if flux_norm else None)
    print(report.summary())
    for issue in report.failures[:20]:
        print(f"  failed: {issue.file}: {issue.reason}")
    if len(report.failures) > 20:
        print(f"  ... {len(report.failures) - 20} more failures in {Path(args.out) / 'ingest_report.csv'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from astrovader.data.selection import apply_split

    modes = [m for m in (args.fractions, args.paper_counts or None, args.id_lists) if m]
    if len(modes) != 1:
        raise CLIError("choose exactly one of --fractions, --paper-counts or --id-lists")
    fractions = None
    if args.fractions:
        try:
            fractions = tuple(float(x) for x in args.fractions.split(","))
        except ValueError:
            raise CLIError(f"--fractions must be three numbers like 0.8,0.05,0.15, got {args.fractions!r}") from None
        if len(fractions) != 3:
            raise CLIError(f"--fractions needs three values (train,validation,test), got {args.fractions!r}")
    counts = apply_split(args.dataset, fractions=fractions, paper_counts=args.paper_counts, id_lists=args.id_lists,
                         seed=args.seed, batch_size=args.batch_size, min_votes=args.min_votes,
                         votes_column=args.votes_column, overwrite=args.overwrite)
    print(", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" -> {Path(args.dataset) / 'catalog.parquet'}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from astrovader.data.download import SERVICES, download_cutouts

    if args.url_template and args.service:
        raise CLIError("give either --service or --url-template, not both")
    template = args.url_template or SERVICES[args.service or "dr17"]
    report = download_cutouts(args.catalog, args.out, url_template=template,
                              workers=args.workers, delay=args.delay, retries=args.retries, backoff=args.backoff,
                              timeout=args.timeout, size=args.size, scale_factor=args.scale_factor,
                              limit=args.limit, progress=not args.quiet)
    print(report.summary())
    return 0 if not report.failed else 1


# ------------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="pack a folder of JPEG/PNG/FITS images (or a GZ2/Kaggle/Galaxy10 release) into a dataset",
        description="Centre-crop, grey (band mean) or colour, resize and store images as a packed dataset. "
                    "Re-running on a killed, incomplete dataset resumes it. Failed and skipped inputs are listed "
                    "in OUT/ingest_report.csv.")
    p.add_argument("src", metavar="SRC", help="image folder (searched recursively); for --source galaxy10 the "
                   "HDF5 file; for --source kaggle the folder holding images_training_rev1/")
    p.add_argument("out", metavar="OUT", help="output dataset directory (created, resumed, or appended to)")
    p.add_argument("--source", default="folder", choices=("folder", "kaggle", "gz2", "galaxy10"),
                   help="input layout: folder (default; optional --labels CSV), kaggle (Galaxy Challenge), gz2 "
                        "(Hart+16 catalogue + filename mapping), galaxy10 (HDF5 with images and ans)")
    p.add_argument("--labels", metavar="CSV", help="labels table; rows matched by a 'file' column relative to SRC "
                   "or by id == file stem; every column is kept in catalog.parquet")
    p.add_argument("--id-column", metavar="COL", help="labels column holding the image id (default: id)")
    p.add_argument("--labels-only", action="store_true",
                   help="skip images that have no labels row (default: ingest them with empty labels)")
    p.add_argument("--catalog", metavar="FILE", help="--source gz2: the gz2_hart16 catalogue (CSV or FITS)")
    p.add_argument("--mapping", metavar="CSV", help="--source gz2: gz2_filename_mapping.csv (objid, asset_id)")
    p.add_argument("--preset", metavar="NAME", help="use a preset's stamp recipe (crop, size, colour, derotate, "
                   "flux-norm), e.g. sdss64-k12 or paper; options given explicitly win (`astrovader presets`)")
    p.add_argument("--crop", metavar="FRACTION", help="centre crop as a fraction of the shorter side, e.g. 0.75 or "
                   "192/256 (default: 192/256 for folders, 1 for galaxy10); or NxR90, e.g. 3xR90: a frame N times "
                   "each image's central galaxy's measured 90%%-light radius on a side, centred on it (for "
                   "fixed-scale cut-outs, where galaxies differ in apparent size)")
    p.add_argument("--derotate", action="store_true",
                   help="rotate each stamp so the central galaxy's major axis (from its second moments) is horizontal")
    p.add_argument("--flux-norm", action="store_true",
                   help="scale each stamp to mean grey level 20, so galaxies of one shape look alike whatever "
                        "their surface brightness (colours are kept)")
    p.add_argument("--crop-px", type=positive_int("--crop-px"), metavar="N",
                   help="centre crop of N x N pixels (default 192 for kaggle and gz2: their 424 px frames share "
                        "the paper's 0.02 x petroR90 pixel scale)")
    p.add_argument("--size", type=positive_int("--size"), metavar="PX", help="output side in pixels (default 128)")
    p.add_argument("--colour", action="store_true", help="keep 3 colour bands instead of averaging to grey")
    p.add_argument("--workers", type=positive_int("--workers"), default=os.cpu_count() or 1,
                   help="decoding processes (default: number of CPUs)")
    p.add_argument("--append", action="store_true", help="add to an existing complete dataset; inputs whose id is "
                   "already present are skipped as duplicates")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=cmd_ingest)

    s = sub.add_parser("split", help="assign train/validation/test to a dataset's catalogue (split column)",
                       description="Write a 'split' column (train/validation/test) into DATASET/catalog.parquet "
                                   "atomically. Rows failing the vote cut, or absent from --id-lists, get "
                                   "'excluded' / 'unassigned'.")
    add_dataset(s)
    s.add_argument("--fractions", metavar="T,V,E", help="train,validation,test fractions, e.g. 0.8,0.05,0.15 "
                   "(train rounded down to a multiple of --batch-size)")
    s.add_argument("--paper-counts", action="store_true", help="the paper's split: 159,600 train, 5,000 "
                   "validation, the rest (41,100 of 205,700) test")
    s.add_argument("--id-lists", metavar="DIR", help="folder of *Train*/*Valid*/*Test* .npy id lists (e.g. "
                   "astrovader-splits)")
    s.add_argument("--seed", type=int, default=0, help="random seed for --fractions/--paper-counts (default 0)")
    add_overwrite(s, help="replace an existing, different split column (the old "
                   "one is kept as split_previous; runs trained on it then fail `astrovader check`)")
    s.add_argument("--batch-size", type=positive_int("--batch-size"), default=100,
                   help="train count is rounded down to a multiple of this (default 100)")
    s.add_argument("--min-votes", type=int, default=None, metavar="N",
                   help="keep only galaxies with more than N votes on the first question (paper: 36; default: "
                        "no cut)")
    s.add_argument("--votes-column", default=None, metavar="COL",
                   help="catalogue column with first-question votes (default: first_question_votes, or the sum "
                        "of smooth/featured/artifact counts)")
    s.set_defaults(func=cmd_split)

    d = sub.add_parser("download", help="download SDSS colour JPEG cut-outs for a catalogue",
                       description="Fetch one 256x256 JPEG per object at 0.02 x petroR90_r arcsec/px. Resumable: "
                                   "a re-run fetches only missing or invalid files. Writes OUT/manifest.csv.")
    d.add_argument("catalog", metavar="CATALOG", help="CSV/Parquet/FITS with id (or objid/dr7objid), ra, dec and "
                   "petro_r90 (or petroR90_r)")
    d.add_argument("out", metavar="OUT", help="output folder for <id>.jpg files and manifest.csv")
    d.add_argument("--service", choices=("dr17", "dr7"), default=None,
                   help="cut-out service: dr17, SkyServer's current REST service (default), or dr7, the retired "
                   "CasJobs service the paper used")
    d.add_argument("--url-template", metavar="URL", help="any other cut-out URL, with {ra} {dec} {scale} {size} "
                   "placeholders")
    d.add_argument("--workers", type=positive_int("--workers"), default=4, help="concurrent requests (default 4)")
    d.add_argument("--delay", type=non_negative_float("--delay"), default=0.1,
                   help="minimum seconds between request starts, across all workers (default 0.1)")
    d.add_argument("--retries", type=int, default=4, help="retries per object after the first try (default 4)")
    d.add_argument("--backoff", type=non_negative_float("--backoff"), default=1.0,
                   help="first retry wait in seconds, doubled each retry (default 1)")
    d.add_argument("--timeout", type=non_negative_float("--timeout"), default=30.0,
                   help="per-request timeout in seconds (default 30)")
    d.add_argument("--size", type=positive_int("--size"), default=256, help="cut-out side in pixels (default 256)")
    d.add_argument("--scale-factor", type=non_negative_float("--scale-factor"), default=0.02,
                   help="pixel scale = factor x petroR90_r arcsec (default 0.02)")
    d.add_argument("--limit", type=positive_int("--limit"), help="only the first N catalogue rows")
    add_quiet(d, "no progress bar")
    d.set_defaults(func=cmd_download)
