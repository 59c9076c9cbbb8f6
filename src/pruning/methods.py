"""The built-in pruning methods: the one module that names them all. Importing it registers
them (``src.pruning.core.registry.register``), so the recipe schema (``src.config.schema``) holds
their keys; ``prune_method: none`` is the base class ``Pruner`` (no pruning)."""
from src.pruning.core.base import Pruner
from src.pruning.core.registry import register
from src.pruning.filters.pruner import PSAPPruner
from src.pruning.masks.gmp import GMPPruner
from src.pruning.masks.rigl import RigLPruner
from src.pruning.masks.rpg.pruner import RPGPruner

BUILT_IN = (Pruner, GMPPruner, RPGPruner, RigLPruner, PSAPPruner)

for _method in BUILT_IN:
    register(_method)
