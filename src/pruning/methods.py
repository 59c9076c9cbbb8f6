"""The built-in pruning methods: the one module that names them all. Importing it registers
them (``src.pruning.registry.register``), so the recipe schema (``src.config.schema``) holds
their keys; ``prune_method: none`` is the base class ``Pruner`` (no pruning)."""
from src.pruning.base import Pruner
from src.pruning.gmp import GMPPruner
from src.pruning.psap import PSAPPruner
from src.pruning.registry import register
from src.pruning.rigl import RigLPruner
from src.pruning.rpg import RPGPruner

BUILT_IN = (Pruner, GMPPruner, RPGPruner, RigLPruner, PSAPPruner)

for _method in BUILT_IN:
    register(_method)
