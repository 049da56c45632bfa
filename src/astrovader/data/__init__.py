"""Readers, the packed dataset format, simulation and download."""

from astrovader.data.dataset import Dataset, DatasetError, DatasetWriter, open_dataset, write_dataset

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "open_dataset", "write_dataset"]
