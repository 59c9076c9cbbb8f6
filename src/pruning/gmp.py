"""GMP: gradual magnitude pruning (Zhu & Gupta 2017), the baseline beside RPG.

Sparsity follows the cubic schedule between ``gmp_begin_step`` and ``gmp_end_step``, with a mask
update every ``gmp_frequency`` iterations; magnitude only (global or per layer), no regrowth,
no rank loss.
"""
from src.config import ConfigError, Key, add_keys
from src.pruning.hard_mask import HardMaskPruner
from src.pruning.mask_ops import global_magnitude_masks, layer_magnitude_masks
from src.pruning.schedules import cubic_sparsity, gmp_update_steps

add_keys({
    "gmp_begin_step": Key(int, 0, 0, None, help_text="iteration of the first mask update"),
    "gmp_end_step": Key(int, 0, 0, None, help_text="iteration of the last mask update; "
                                                   "0 = T_end_percent of training"),
    "gmp_frequency": Key(int, 100, 1, None, help_text="iterations between mask updates"),
    "gmp_scope": Key(str, "global", choices=["global", "layer"],
                     help_text="one magnitude threshold over all layers, or one per layer"),
})


class GMPPruner(HardMaskPruner):
    name = "gmp"

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.begin = cfg.gmp_begin_step
        self.end = cfg.gmp_end_step or int(cfg.T_end_percent * self.total_steps)
        if not self.begin <= self.end < self.total_steps:
            raise ConfigError(f"config key 'gmp_end_step': pruning must end inside training "
                              f"(begin {self.begin} <= end {self.end} < {self.total_steps} iterations)")
        self.update_steps = gmp_update_steps(self.begin, self.end, cfg.gmp_frequency)
        logger.info(f"gmp: {len(self.names)} masked weights, {len(self.update_steps)} mask updates "
                    f"from step {self.begin} to {self.end}, {cfg.gmp_scope} magnitude")

    def update_masks(self, step, batch, ctx):
        target_sparsity = cubic_sparsity(step, self.cfg.sparsity, self.begin, self.end)
        self.target_density = 1.0 - target_sparsity
        weights = ctx.get_weights(self.names)
        select = global_magnitude_masks if self.cfg.gmp_scope == "global" else layer_magnitude_masks
        sparsity = self.install(select(weights, self.target_density), ctx)
        self.logger.info(f"gmp mask update {self.updates_done + 1}/{len(self.update_steps)} at step "
                         f"{step}: target density {self.target_density:.6f} sparsity {sparsity:.6f}")
        return None
