"""GMP: gradual magnitude pruning (Zhu & Gupta 2017), the baseline beside RPG.

Sparsity follows the cubic schedule between ``gmp_begin_step`` and ``gmp_end_step``, with a mask
update every ``gmp_frequency`` iterations; magnitude only (``density_distribution``: one global
threshold, or per layer at uniform / ERK counts), no regrowth, no rank loss.
"""
from src.errors import ConfigError
from src.pruning.masks.hard_mask import HardMaskPruner
from src.pruning.masks.schedules import CubicSchedule, t_end_step
from src.recipe_keys import Key


class GMPPruner(HardMaskPruner):
    name = "gmp"
    keys = {
        "gmp_begin_step": Key(int, 0, 0, None, help_text="iteration of the first mask update"),
        "gmp_end_step": Key(int, 0, 0, None, help_text="iteration of the last mask update; "
                                                       "0 = T_end_percent of training"),
        "gmp_frequency": Key(int, 100, 1, None, help_text="iterations between mask updates"),
    }

    @classmethod
    def check_recipe(cls, cfg):
        super().check_recipe(cfg)
        if cfg.gmp_end_step and cfg.gmp_end_step < cfg.gmp_begin_step:
            raise ConfigError(f"config key 'gmp_end_step': got {cfg.gmp_end_step}, expected at least "
                              f"gmp_begin_step ({cfg.gmp_begin_step})")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        begin = cfg.gmp_begin_step
        end = cfg.gmp_end_step or t_end_step(cfg.T_end_percent, self.total_steps)
        if not begin <= end < self.total_steps:
            raise ConfigError(f"config key 'gmp_end_step': pruning must end inside training "
                              f"(begin {begin} <= end {end} < {self.total_steps} iterations)")
        self.schedule = CubicSchedule(begin, end, cfg.gmp_frequency, cfg.sparsity)
        logger.info(f"gmp: {len(self.names)} masked weights, {len(self.update_steps)} mask updates "
                    f"from step {begin} to {end}, {self.allocation()}")
