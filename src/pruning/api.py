"""The public import path of the two ways to prune in your own code, as the README and issue 20
promise it: ``SparseTraining`` (your own loop, ``src/sparse_training.py``) and
``PruningAlgorithm`` (inside ``ms.Model.train``, ``src/model_train.py``).

    from src.pruning.api import PruningAlgorithm, SparseTraining

Only names are re-exported here. Both classes build their settings with ``src.config``, which
imports the methods of this folder, so they live above it; this module is the one place in
``src/pruning`` that imports upwards (tests/test_layout.py: ``FACADES``)."""
from src.model_train import PruningAlgorithm
from src.sparse_training import SparseTraining, method_settings

__all__ = ["PruningAlgorithm", "SparseTraining", "method_settings"]
