"""``prune_method`` -> pruner class. Importing this module declares every pruner's config keys."""
from src.pruning.base import Pruner
from src.pruning.gmp import GMPPruner
from src.pruning.psap import PSAPPruner
from src.pruning.rpg import RPGPruner

PRUNERS = {"none": Pruner, "gmp": GMPPruner, "rpg": RPGPruner, "psap": PSAPPruner}


def build_pruner(cfg, net, steps_per_epoch, logger):
    return PRUNERS[cfg.prune_method](cfg, net, steps_per_epoch, logger)
