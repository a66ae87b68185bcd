"""Synthetic attribute-prediction data (MREF / MDIST / MBG) and its MNIST sources."""

from attentionrnn.data.dataset import AttributeDataset
from attentionrnn.data.generate import COLOR_NAMES, DATASETS, PALETTE, generate_dataset
from attentionrnn.data.mnist import MnistDigits, MnistError, load_mnist

__all__ = [
    "COLOR_NAMES",
    "DATASETS",
    "PALETTE",
    "AttributeDataset",
    "MnistDigits",
    "MnistError",
    "generate_dataset",
    "load_mnist",
]
