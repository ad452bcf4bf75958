"""Data pipeline: sources, TFDS builders, augmentation, packing, mixing, resume.

Importing this package registers the ``jaxlm_*`` TFDS builders (cheap: TFDS
does not import TensorFlow until a dataset is built). The tf.data pipeline
itself imports TensorFlow (~5 s), so ``build_pipeline``/``Pipeline`` are
loaded on first use.
"""

import os

# TensorFlow's C++ INFO/WARNING lines (oneDNN notices, tf.data cache notes) drown the
# training log; users who want them set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxlm.data.config import AugmentConfig, DataConfig, SourceConfig
from jaxlm.data.records import DataError, ReadStats, Record, read_records
from jaxlm.data import builders as _builders  # noqa: F401  (registers jaxlm_* with TFDS)

_LAZY = {
    "build_pipeline": "jaxlm.data.pipeline",
    "build_from_config": "jaxlm.data.pipeline",
    "Pipeline": "jaxlm.data.pipeline",
}

__all__ = [
    "AugmentConfig", "DataConfig", "SourceConfig",
    "DataError", "ReadStats", "Record", "read_records",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxlm.data' has no attribute {name!r}")
