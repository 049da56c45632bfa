"""Prediction catalogues: latent means, log-variances, cluster probabilities and reconstruction errors for a
whole dataset, streamed to a Parquet (or FITS) file with bounded memory, or to Parquet parts on Dask workers."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from astrovader.compute import check_precision
from astrovader.data.dataset import Dataset, atomic_write_json, open_dataset
from astrovader.data.locks import exclusive
from astrovader.data.outputs import fits_text, remove_stale_temporaries, temporary_name
from astrovader.errors import InputError
from astrovader.inference import iter_inference
from astrovader.model import AstroVaDErNet
from astrovader.runs import Run, fits_cards


def prediction_table(ids: np.ndarray, res: dict[str, np.ndarray], names: dict[int, str] | None = None) -> pa.Table:
    """The catalogue columns for one block: id, z_j, logvar_j, p_k, component, max_prob, recon_mse and, with
    ``names`` ({component: name}), component_name ("" for unnamed components)."""
    J = res["mu"].shape[1]
    K = res["probs"].shape[1]
    cols: dict[str, np.ndarray] = {"id": ids}
    for j in range(J):
        cols[f"z_{j}"] = res["mu"][:, j].astype(np.float32)
    for j in range(J):
        cols[f"logvar_{j}"] = res["logvar"][:, j].astype(np.float32)
    for k in range(K):
        cols[f"p_{k}"] = res["probs"][:, k].astype(np.float32)
    cols["component"] = res["probs"].argmax(1).astype(np.int16)
    cols["max_prob"] = res["probs"].max(1).astype(np.float32)
    cols["recon_mse"] = res["recon_mse"].astype(np.float32)
    if names is not None:
        cols["component_name"] = np.array([names.get(int(c), "") for c in cols["component"]], dtype=object)
    return pa.table(cols)


CATALOG_SUFFIXES = (".parquet", ".fits", ".fit", ".fits.gz")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output name that is not a catalogue, is a directory, or exists (without ``overwrite``)."""
    if not out.name.lower().endswith(CATALOG_SUFFIXES):
        raise InputError(f"{out}: a prediction catalogue is .parquet, .fits or .fits.gz; name the output "
                         "accordingly")
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give a file name ending in .parquet or .fits")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it, or choose another name")


def _with_metadata(table: pa.Table, metadata: dict[str, str] | None) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}) if metadata else table


def _parquet_to_fits(parquet_path: Path, out: Path, suffix: str, metadata: dict[str, str]) -> None:
    """The finished Parquet catalogue as a FITS table ``PREDICTIONS`` at ``out``, provenance as header cards."""
    from astropy.table import Table

    tmp_fits = temporary_name(out, suffix)  # astropy compresses a name ending in .gz
    with warnings.catch_warnings():  # string columns (component_name): astropy measures their width itself
        warnings.filterwarnings("ignore", message="No table::len::")
        table = Table.read(str(parquet_path), format="parquet")
    table.meta["EXTNAME"] = "PREDICTIONS"
    for key, value, comment in fits_cards(metadata):
        table.meta[key] = (value, comment) if comment else value
    for name in table.colnames:
        if table[name].dtype.kind in "OU":
            table[name] = [fits_text(v) for v in table[name]]
    table.write(str(tmp_fits), format="fits", overwrite=True)
    os.replace(tmp_fits, out)


def predict_dataset(net: AstroVaDErNet, dataset: str | Path | Dataset, out: str | Path, *,
                    batch_size: int = 1024, start: int = 0,
                    stop: int | None = None, progress: bool = True, overwrite: bool = False,
                    metadata: dict[str, str] | None = None, names: dict[int, str] | None = None,
                    precision: str = "float32") -> Path:
    """Write the prediction catalogue of a dataset's rows ``start:stop``.

    Memory is bounded by one read block, whatever the dataset's size. The file appears atomically. A non-finite value
    never reaches the catalogue: it stops the run with the rows named.

    Parameters
    ----------
    net : AstroVaDErNet
        The trained network (:attr:`Run.network`).
    dataset : path-like or Dataset
        The images to classify.
    out : path-like
        ``.parquet``, or ``.fits`` for a FITS table with the provenance in its header.
    batch_size : int, default 1024
        Images per forward pass.
    start, stop : int, optional
        The rows to predict (default: all).
    progress : bool, default True
        Show a progress bar.
    overwrite : bool, default False
        Replace an existing ``out``.
    metadata : dict of str to str, optional
        Stored in the Parquet schema (FITS: header keys), for example :meth:`Run.provenance`.
    names : dict of int to str, optional
        Component names (from ``read_names``): a ``component_name`` column and a ``CNAMES`` key.
    precision : {"float32", "bf16"}, default "float32"
        The decoder's arithmetic (recorded as ``PRECISN``); latents and probabilities stay float32.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    out = Path(out)
    check_output(out, overwrite)
    ds = open_dataset(dataset)
    metadata = {**(metadata or {}), "PRECISN": check_precision(precision)}
    if names is not None:
        metadata = {**(metadata or {}), "CNAMES": json.dumps({str(k): v for k, v in sorted(names.items())})}
    stop = len(ds) if stop is None else min(stop, len(ds))
    ids = ds.ids
    splits = ds.catalog["split"].to_numpy() if "split" in ds.catalog.columns else None
    fits_suffix = next((s for s in (".fits.gz", ".fits", ".fit") if out.name.lower().endswith(s)), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a killed process (e.g. a Dask worker); a live job's are kept
    parquet_path = temporary_name(out, ".parquet")
    writer: pq.ParquetWriter | None = None
    try:
        for rows, res in iter_inference(net, ds, start=start, stop=stop, batch_size=batch_size, progress=progress,
                                        desc="predicting", precision=precision):
            bad = np.flatnonzero(~np.all([np.isfinite(v).reshape(len(rows), -1).all(1) for v in res.values()], 0))
            if len(bad):
                raise InputError(f"{ds.path}: non-finite predictions for {len(bad)} images (first id "
                                 f"{ids[rows[bad[0]]]!r}, row {rows[bad[0]]}); check those images and the run with "
                                 "`astrovader check`")
            table = prediction_table(ids[rows], res, names)
            if splits is not None:  # which rows were held out, beside every prediction
                table = table.append_column("split", pa.array(splits[rows].astype(str)))
            if writer is None:
                writer = pq.ParquetWriter(str(parquet_path), _with_metadata(table, metadata).schema)
            writer.write_table(table)
        if writer is None:  # empty range: still write a valid, empty catalogue
            J, K = net.cfg.model.latent_dim, net.cfg.model.n_components
            empty = {"mu": np.zeros((0, J)), "logvar": np.zeros((0, J)), "probs": np.zeros((0, K)),
                     "recon_mse": np.zeros(0)}
            table = prediction_table(ids[:0], empty, names)
            if splits is not None:
                table = table.append_column("split", pa.array([], pa.string()))
            pq.write_table(_with_metadata(table, metadata), str(parquet_path))
        else:
            writer.close()
            writer = None
        if fits_suffix:
            _parquet_to_fits(parquet_path, out, fits_suffix, metadata)
            parquet_path.unlink()
        else:
            os.replace(parquet_path, out)
    finally:
        if writer is not None:
            writer.close()
        if parquet_path.exists():
            parquet_path.unlink()
    return out


# --------------------------------------------------------------------------------------------------
# survey scale: Dask
# --------------------------------------------------------------------------------------------------
_WORKER_MODELS: dict[tuple[str, str], AstroVaDErNet] = {}


def _worker_model(run_dir: str, device: str) -> AstroVaDErNet:
    """One model per worker process, loaded on first use and kept for every later chunk."""
    key = (run_dir, device)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = Run.open(run_dir, device).network
    return _WORKER_MODELS[key]


def _predict_part(part: tuple[int, int, int], run_dir: str, dataset: str, out_dir: str, images_per_batch: int,
                  device: str, precision: str = "float32") -> str:
    index, start, stop = part
    if device == "auto" and not torch.cuda.is_available():
        torch.set_num_threads(1)  # one thread per Dask worker process: the workers are the parallelism
    net = _worker_model(run_dir, device)
    path = Path(out_dir) / f"part-{index:05d}.parquet"
    predict_dataset(net, dataset, path, batch_size=images_per_batch, start=start, stop=stop, progress=False,
                    overwrite=True, precision=precision)
    return str(path)


def plan_parts(n: int, chunk_rows: int) -> list[tuple[int, int, int]]:
    return [(i, s, min(s + chunk_rows, n)) for i, s in enumerate(range(0, n, chunk_rows))]


JOB = "_job.json"
MANIFEST = "_manifest.json"


def _job(run: Run, ds: Dataset, chunk_rows: int, precision: str = "float32") -> dict[str, Any]:
    """What a partitioned catalogue is of: the weights (by content), the dataset and its size, the chunking and
    the arithmetic (parts of float32 and bf16 are never mixed)."""
    job = {"weights_sha256": run.weights_sha256, "dataset": str(Path(ds.path).resolve()), "n": len(ds),
           "chunk_rows": int(chunk_rows)}
    return job if precision == "float32" else {**job, "precision": precision}  # float32 jobs read as before


def _claim(out_dir: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Make ``out_dir`` this job's: continue the same job, refuse another's parts, or clear them on request."""
    job_file = out_dir / JOB
    parts = sorted(out_dir.glob("part-*.parquet")) if out_dir.is_dir() else []
    old = None
    if job_file.is_file():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise InputError(f"{job_file}: unreadable ({' '.join(str(exc).split())}); pass --overwrite to start "
                             "this folder afresh, or choose a new output directory") from None
        if not isinstance(old, dict):
            raise InputError(f"{job_file}: holds a JSON {type(old).__name__}, not the object astrovader writes; pass "
                             "--overwrite to start this folder afresh, or choose a new output directory")
    if old == job:
        return
    if (parts or old is not None) and not overwrite:
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {job.get(k)!r} now" for k in {**old, **job}
                         if old.get(k) != job.get(k)) if old else f"{len(parts)} parts of an unrecorded job"
        raise FileExistsError(f"{out_dir}: holds predictions of another job ({diff}); pass --overwrite to "
                              "replace them, or choose a new output directory")
    for f in [*parts, job_file, out_dir / MANIFEST]:
        f.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job_file, job)


def predict_dask(run: Run | str | Path, dataset: str | Path, out_dir: str | Path, *, scheduler: str = "local",
                 chunk_rows: int = 8192, batch_size: int = 1024, device: str = "auto",
                 progress: bool = True, overwrite: bool = False, precision: str = "float32") -> Path:
    """Predict a dataset in chunks on Dask workers, writing a partitioned Parquet catalogue.

    Each chunk becomes ``part-NNNNN.parquet``, written atomically; parts already present are skipped, so a killed job
    is finished by running it again. ``_job.json`` records what the parts belong to (the weights, the dataset and the
    chunking): a folder holding parts of another job is refused, or emptied with ``overwrite``. Worker memory is
    bounded by the chunk size.

    Parameters
    ----------
    run : Run, str or path-like
        The trained run (each worker opens it once, on its own device).
    dataset : path-like
        The images to classify.
    out_dir : path-like
        The folder of Parquet parts.
    scheduler : str, default "local"
        ``local``, ``local:N`` (a LocalCluster of N single-threaded worker processes here) or the address of a
        running scheduler (for example one started by dask-jobqueue on a SLURM or PBS cluster).
    chunk_rows : int, default 8192
        Rows per part.
    batch_size : int, default 1024
        Images per forward pass on a worker.
    device : str, default "auto"
        The workers' device.
    progress : bool, default True
        Show a progress bar of parts.
    overwrite : bool, default False
        Empty a folder that holds another job's parts.
    precision : {"float32", "bf16"}, default "float32"
        As for :func:`predict_dataset`.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    check_precision(precision)

    run = Run.open(run, "cpu")  # the workers open it again, each on its own device
    ds = open_dataset(dataset)
    out_dir = Path(out_dir)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; --dask writes a directory of Parquet parts, give a directory name")
    with exclusive(out_dir):  # two jobs on one folder would share and delete each other's parts
        return _run_dask(run, ds, out_dir, scheduler, chunk_rows, batch_size, device, progress, overwrite,
                         precision)


def _run_dask(run: Run, ds: Dataset, out_dir: Path, scheduler: str, chunk_rows: int, batch_size: int,
              device: str, progress: bool, overwrite: bool, precision: str) -> Path:
    from dask.distributed import Client, LocalCluster, as_completed

    _claim(out_dir, _job(run, ds, chunk_rows, precision), overwrite)
    parts = plan_parts(len(ds), chunk_rows)
    todo = [p for p in parts if not (out_dir / f"part-{p[0]:05d}.parquet").exists()]
    if progress:
        print(f"{len(parts)} parts of up to {chunk_rows} images; {len(parts) - len(todo)} already done, "
              f"{len(todo)} to predict")
    if todo:
        if scheduler == "local" or scheduler.startswith("local:"):
            n_workers = int(scheduler.split(":", 1)[1]) if ":" in scheduler else (os.cpu_count() or 1)
            if n_workers < 1:
                raise InputError(f"--dask local:N needs N >= 1, got {scheduler!r}")
            # ":0": distributed still opens an HTTP port when given None (8787, shared by every job on the host)
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", scheduler_kwargs={"dashboard": False})
            client = Client(cluster)
        else:
            cluster, client = None, Client(scheduler)
        try:
            futures = client.map(_predict_part, todo, run_dir=str(run.path.resolve()),
                                 dataset=str(Path(ds.path).resolve()), out_dir=str(out_dir.resolve()),
                                 images_per_batch=batch_size, device=device, precision=precision,
                                 pure=False)  # not batch_size:
            # Client.map has a keyword of that name
            with tqdm(total=len(todo), desc="parts", unit="part", disable=not progress) as bar:
                for fut in as_completed(futures):
                    fut.result()  # re-raises a worker's error here, with its message
                    bar.update(1)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    atomic_write_json(out_dir / MANIFEST, {"dataset": str(Path(ds.path).resolve()),
                                                   "run_dir": str(run.path.resolve()), "n": len(ds),
                                                   "chunk_rows": chunk_rows, "parts": len(parts)})
    return out_dir


def read_names(path: str | Path, n_components: int, weights: str | None = None) -> dict[int, str]:
    """Component names from an exported ``component_names.json``: {component: name} for the named ones.
    Refuses a file that is not one, names components the model does not have, or was made for other weights."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc}); export it again from explorer.html") from None
    if not isinstance(body, dict) or not isinstance(body.get("components"), dict):
        raise InputError(f"{path}: no 'components' object; this is not a component_names.json from the explorer")
    if weights and body.get("weights") and body["weights"] != weights:
        raise InputError(f"{path}: names were given for the model with weights {body['weights']}, not this run's "
                         f"{weights}; name this run's components in its own explorer.html")
    out: dict[int, str] = {}
    for key, entry in body["components"].items():
        try:
            k = int(key)
        except ValueError:
            raise InputError(f"{path}: component key {key!r} is not a number") from None
        if not 0 <= k < n_components:
            raise InputError(f"{path}: component {k} is not in 0..{n_components - 1}")
        name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
        if name:
            out[k] = str(name)
    return out
