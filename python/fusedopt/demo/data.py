"""The data set: scikit-learn's handwritten digits, split into train and test."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Digits(NamedTuple):
    x_train: np.ndarray  # float32 (n_train, 64), each pixel standardized on the training set
    y_train: np.ndarray  # int64 (n_train,), classes 0..9
    x_test: np.ndarray
    y_test: np.ndarray


def missing_extra() -> str | None:
    """None, or which of the demo's packages is missing, with the command that adds it."""
    for module in ("sklearn", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            name = "scikit-learn" if module == "sklearn" else module
            return f"the demo needs {name}: pip install \"fusedopt[demo]\""
    return None


def load_digits(seed: int, test_fraction: float = 0.2) -> Digits:
    """The 1,797 8x8 digit images (shipped with scikit-learn, no download), a stratified
    split with ``test_fraction`` held out, each pixel standardized with the training set's
    mean and standard deviation (a pixel that never varies there is only centred)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0.0] = 1.0

    def scaled(a):
        return np.ascontiguousarray((a - mean) / std, dtype=np.float32)

    return Digits(scaled(x_train), y_train, scaled(x_test), y_test)
