"""Core commands: demo, train, predict, summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from astrovader.cli import CLIError
from astrovader.cli.options import (
    add_allow_unfinished,
    add_dataset,
    add_device,
    add_overwrite,
    add_precision,
    add_quiet,
    add_run,
    positive_int,
)


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None) -> None:
    p.add_argument("--preset", default=default_preset, metavar="NAME",
                   help="named configuration, e.g. paper, demo, sdss64-k12, sdss64-k3, mnist (`astrovader presets` "
                   f"lists them; default: {default_preset or 'the paper defaults'})")
    p.add_argument("--config", metavar="FILE", help="TOML config file applied on top of the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.seed=3 --set model.n_components=8 (repeatable)")


def _resolve_config(args: argparse.Namespace):
    from astrovader.config import Config

    return Config.resolve(args.preset, args.config, args.overrides)


def cmd_check(args: argparse.Namespace) -> int:
    from astrovader.health import check_path

    code = 0
    for path in args.paths:
        health = check_path(path, progress=not args.quiet)
        print(health.report())
        code = code or (0 if health.ok else 1)
    return code


def cmd_presets(args: argparse.Namespace) -> int:
    from astrovader import pretrained
    from astrovader.presets import PRESETS

    models = {name: pretrained.card(name) for name in pretrained.names()}
    width = max(len(name) for name in [*PRESETS, *models]) + 2
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}{preset.description}")
    if models:
        print("\npretrained models (use the name as RUN, e.g. `astrovader predict NAME DATASET OUT`):")
        for name, info in models.items():
            print(f"{name:<{width}}{info['summary']}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from astrovader.model import AstroVaDErNet, describe_architecture

    cfg = _resolve_config(args)
    rows = describe_architecture(cfg)
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'layer':<{width}}{'output':>16}{'params':>12}")
    for name, shape, n in rows:
        print(f"{name:<{width}}{shape:>16}{n:>12,}")
    counts = AstroVaDErNet(cfg).count_parameters()
    m = cfg.model
    print()
    print(f"encoder parameters: {counts['encoder']:,}")
    print(f"decoder parameters: {counts['decoder']:,}")
    print(f"network parameters: {counts['network']:,}")
    print(f"GMM parameters:     {counts['gmm']:,} (K + 2*K*J = {m.n_components} + 2*{m.n_components}*{m.latent_dim})")
    print(f"total parameters:   {counts['total']:,}")
    t = cfg.train
    init = "UMAP graph" if t.gmm_init_embedding == "umap" else "k-means + GMM"
    align = f"{t.align_epochs} alignment epochs, " if t.align_epochs else ""
    print(f"schedule: {t.gamma_epochs} gamma-training epochs, GMM init ({init}) on {t.gmm_init_batches} batches, "
          f"{align}{t.periods} x ({t.anneal_epochs} annealing + {t.static_epochs} static) = {t.epochs} epochs")
    return 0


def _adopt_dataset_geometry(cfg, args: argparse.Namespace) -> None:
    """A preset fixes the architecture, not the data: unless the user set model.image_size or model.channels
    (by --set or --config), the network is built for the dataset's own image size and number of bands."""
    from astrovader.data.dataset import Dataset, is_dataset

    if not is_dataset(args.dataset):
        return
    ds = Dataset(args.dataset)
    explicit = " ".join(args.overrides) + (Path(args.config).read_text() if args.config else "")
    for key, value in (("image_size", ds.image_size), ("channels", ds.channels)):
        if key not in explicit and getattr(cfg.model, key) != value:
            print(f"note: using model.{key} = {value} from the dataset (the preset has {getattr(cfg.model, key)})")
            setattr(cfg.model, key, value)
    cfg.validate()


def cmd_train(args: argparse.Namespace) -> int:
    from astrovader.runs import CONFIG
    from astrovader.train import TrainingDiverged, train

    run_dir = Path(args.run_dir)
    if args.resume and (run_dir / CONFIG).exists() and not (args.config or args.preset):
        from astrovader.config import Config

        cfg = Config.resolve(None, run_dir / CONFIG, args.overrides)  # continue with the run's own config
    else:
        cfg = _resolve_config(args)
    if args.stop_after is not None and args.stop_after < 0:
        raise CLIError("--stop-after must be >= 0")
    _adopt_dataset_geometry(cfg, args)
    if args.device is not None:
        cfg.train.device = args.device
    if args.tensorboard:
        cfg.train.tensorboard = True
    cfg.validate()
    try:
        res = train(cfg, args.dataset, run_dir, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.quiet, stop_after_epoch=args.stop_after)
    except TrainingDiverged as exc:
        raise CLIError(str(exc)) from None
    last = res.history[-1] if res.history else {}
    where = (f"{run_dir} (model.safetensors, history.csv, config.toml)" if res.run_dir == run_dir else
             f"{run_dir}, candidate {res.run_dir.name} of train.restarts = {cfg.train.restarts}; continue with "
             f"`astrovader train {args.dataset} {run_dir} --resume`")
    print(f"trained to epoch {last.get('epoch', -1) + 1}/{cfg.train.epochs}; run directory {where}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from astrovader.predict import predict_dataset, read_names
    from astrovader.runs import Run

    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    run.check_stamps(args.dataset)
    args.names = args.names or run.names_file
    if args.dask:
        from astrovader.predict import predict_dask

        if args.names:
            raise CLIError("--names is not supported with --dask yet; add the names afterwards from the JSON file")
        if Path(args.out).suffix.lower() in (".fits", ".fit"):
            raise CLIError("--dask writes a partitioned Parquet directory; give a directory name as OUT")
        out = predict_dask(run, args.dataset, args.out, scheduler=args.dask, chunk_rows=args.chunk_rows,
                           batch_size=args.batch_size, device=args.device or "auto", progress=not args.quiet,
                           overwrite=args.overwrite, precision=args.precision)
        print(f"wrote partitioned predictions to {out}/ (read with pandas.read_parquet('{out}'))")
        return 0

    metadata = {**run.provenance(args.command_line), "DATASET": str(Path(args.dataset).resolve())}
    if not run.state.finished:
        metadata["RUNSTATE"] = run.state.describe()
    names = read_names(args.names, run.config.model.n_components, run.weights_sha256) if args.names else None
    out = predict_dataset(run.network, args.dataset, args.out, batch_size=args.batch_size, progress=not args.quiet,
                          overwrite=args.overwrite, metadata=metadata, names=names, precision=args.precision)
    if not run.state.finished:
        print(f"warning: {run.name}: {run.state.describe()} (recorded in {out}'s metadata)")
    import pyarrow.parquet as pq

    if out.suffix.lower() == ".parquet":
        n = pq.ParquetFile(out).metadata.num_rows
        print(f"wrote {n} predictions to {out}")
    else:
        print(f"wrote predictions to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from astrovader.demo import run_demo

    run_demo(args.out, n=args.n, seed=args.seed, progress=not args.quiet)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate galaxies, train the demo model, predict and score it",
                       description="End to end on built-in simulated galaxies: simulate -> train (demo preset) "
                       "-> predict, printing clustering accuracy and NMI against the true classes beside a "
                       "PCA + GaussianMixture baseline. Re-running resumes an interrupted demo.")
    p.add_argument("out", nargs="?", default="astrovader-demo", help="output directory (default: astrovader-demo)")
    p.add_argument("--n", type=int, default=8000, help="number of simulated galaxies (default 8000)")
    p.add_argument("--seed", type=int, default=0, help="random seed for simulation and training")
    add_quiet(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model with the s3VDC schedule",
                       description="Train AstroVaDEr on a dataset (from `astrovader ingest` or `simulate`). "
                       "A checkpoint is written atomically after every epoch; --resume continues a killed run.")
    add_dataset(p)
    add_run(p, help="run directory (config.toml, model.safetensors, history.csv, checkpoint)")
    _add_config_args(p, None)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last epoch")
    add_overwrite(p, help="replace a run already in RUN_DIR")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="stop after this epoch (0-based); resume later with --resume")
    add_device(p, help="auto, cpu, cuda, cuda:N, mps (default: the config's "
                   "train.device, auto: a GPU when there is one)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log every epoch's losses to RUN_DIR/tensorboard (needs pip install "
                   "'astrovader[tensorboard]'; view with tensorboard --logdir RUN_DIR)")
    add_quiet(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="write a catalogue of latent means and component probabilities",
                       description="Columns: id, z_0..z_{J-1}, logvar_0.., p_0..p_{K-1}, component, max_prob, "
                       "recon_mse. Parquet, or FITS when OUT ends in .fits. Streamed with bounded memory.")
    add_run(p)
    add_dataset(p)
    p.add_argument("out", help="output catalogue (.parquet or .fits)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=1024,
                   help="images per batch (default 1024)")
    add_device(p)
    add_overwrite(p)
    add_allow_unfinished(p, help="predict with a run whose training has not finished (recorded in the output's "
                         "metadata)")
    p.add_argument("--dask", metavar="SCHEDULER", default=None,
                   help="predict in chunks on Dask workers: local, local:N (N worker processes here) or a "
                   "scheduler address such as tcp://host:8786; OUT becomes a directory of Parquet parts and a "
                   "re-run skips finished parts")
    p.add_argument("--names", metavar="JSON", default=None,
                   help="component_names.json exported from the explorer page (astrovader explore): adds a "
                   "component_name column and records the names in the metadata (CNAMES)")
    p.add_argument("--chunk-rows", type=positive_int("--chunk-rows"), default=8192,
                   help="images per Dask part (default 8192)")
    add_precision(p, "predictions")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("check", help="check that a dataset or run directory is whole and usable",
                       description="A dataset: metadata, catalogue (ids present and unique, one row per image) and "
                       "every image chunk (present and decodable). A run: config, weights (readable, finite), the "
                       "mixture prior (initialised), how far training got, and the checkpoint against the config. "
                       "Prints a short summary; exit 0 when healthy, 1 when something is wrong (each problem named "
                       "with its fix). Example: astrovader check data/ run/")
    p.add_argument("paths", nargs="+", metavar="PATH", help="dataset or run directories")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("presets", help="list the named configurations and pretrained models, one a line",
                       description="Every preset usable with --preset (train, summary, ingest's stamp recipe), "
                       "one a line: its name, then what it is and where its settings were measured; then the "
                       "pretrained models shipped with the package, usable by name wherever a RUN is taken.")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("summary", help="architecture table and parameter counts for a config",
                       description="Print the network of a configuration layer by layer (output shapes and "
                       "parameters) and the parameter counts of the encoder, decoder and mixture prior, without "
                       "training or reading any data.")
    _add_config_args(p, "paper")
    p.set_defaults(func=cmd_summary)
