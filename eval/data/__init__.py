"""Datasets, offline first: sources, specs, the models' input format, and what methods need to know.

See :mod:`eval.data.datasets` for the sources tried for each dataset name.
"""

from eval.data.datasets import (
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    HOLDOUT_SPLIT,
    DatasetSpec,
    ImageArrayDataset,
    InputFormat,
    StagedTransform,
    dataset_labels,
    dataset_missing,
    dataset_spec,
    default_data_root,
    load_dataset,
    make_transform,
    prepare_in_memory,
    read_idx,
)
from eval.data.info import DataInfo

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "HOLDOUT_SPLIT",
    "DataInfo",
    "DatasetSpec",
    "ImageArrayDataset",
    "InputFormat",
    "StagedTransform",
    "dataset_labels",
    "dataset_missing",
    "dataset_spec",
    "default_data_root",
    "load_dataset",
    "make_transform",
    "prepare_in_memory",
    "read_idx",
]
