"""The RigL family in the same engine as RPG: RigL (Evci et al. 2020), SET (Mocanu et al. 2018)
and static sparse training, as google-research/rigl defines them and as the RPG authors' code
offers them for comparison.

Three choices, each a recipe key:

- ``density_distribution``: how the density is shared among layers, ``uniform`` or ``erk``
  (distributions.py; ``dense_first_layer``, ``erk_power_scale``); masks keep the
  largest |w| of each layer at its density, exact counts.
- ``grow_rule``: ``gradient`` (RigL: |dense gradient of the task loss| on the update iteration's
  batch; that iteration's optimizer step is skipped, as in RigL's SparseRigLOptimizer),
  ``random`` (SET: uniform random scores; the iteration's optimizer step runs, as in RigL's
  SparseSETOptimizer), ``none`` (static topology: the first mask never changes).
- ``density_schedule``: ``constant`` (RigL / SET: random masks at the distribution's densities
  at step 0, before any training, then drop-and-grow inside each layer's current mask every
  ``delta`` iterations before T_end with the cosine drop fraction) or ``exponential`` (RPG's
  gradual schedule from dense, the distribution's per-layer magnitude masks as targets).

Differences to RigL's code: docs/RPG.md ("The RigL family").
"""
import numpy as np

from src.errors import ConfigError
from src.pruning.masks.distributions import DISTRIBUTIONS, layer_densities
from src.pruning.masks.drop_grow import DropAndGrowPruner
from src.pruning.masks.mask_ops import layer_masks_at, random_layer_masks
from src.pruning.masks.schedules import ConstantSchedule
from src.recipe_keys import Key

GROW_RULES = ("gradient", "random", "none")
DENSITY_SCHEDULES = ("constant", "exponential")


class RigLPruner(DropAndGrowPruner):
    name = "rigl"
    update_label = "a RigL mask update"
    keys = {
        "density_distribution": Key(str, "erk", choices=list(DISTRIBUTIONS),
                                    help_text="per-layer densities: uniform, or Erdos-Renyi-Kernel (RigL)"),
        "erk_power_scale": Key(float, 1.0, 0.0, 10.0,
                               help_text="exponent of ERK's shape factor (RigL's; 0 = uniform, 1 = ERK)"),
        "dense_first_layer": Key(bool, False, help_text="keep the first masked layer dense (the others "
                                                        "share its budget)"),
        "grow_rule": Key(str, "gradient", choices=list(GROW_RULES),
                         help_text="regrowth: |dense gradient| (RigL), random (SET), none (static topology)"),
        "density_schedule": Key(str, "constant", choices=list(DENSITY_SCHEDULES),
                                help_text="constant: final density from step 0 (RigL/SET); exponential: "
                                          "RPG's gradual schedule from dense"),
    }

    @classmethod
    def check_recipe(cls, cfg):
        super().check_recipe(cfg)
        if cfg.grow_rule == "none" and cfg.density_schedule != "constant":
            raise ConfigError("config key 'grow_rule': 'none' (a static topology) needs density_schedule "
                              f"'constant', got '{cfg.density_schedule}' (masks that shrink are not static; "
                              "for gradual pruning without regrowth use prune_method gmp)")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        params = {p.name: p for p in net.trainable_params()}
        self.shapes = {n: tuple(params[n].shape) for n in self.names}
        try:
            densities = self.layer_densities(self.final_density)
            if cfg.density_schedule == "constant":
                self.schedule = ConstantSchedule(self.total_steps, cfg.delta, cfg.T_end_percent,
                                                 self.final_density, cfg.alpha, cfg.grow_rule != "none")
        except ValueError as err:
            raise ConfigError(f"config keys 'sparsity' / 'density_distribution' / 'delta': {err}") from None
        if cfg.density_schedule == "exponential":
            self.schedule = self.exponential_schedule()
        logger.info(f"rigl: {len(self.names)} masked weights, {cfg.density_distribution} densities "
                    f"{min(densities.values()):.4f}..{max(densities.values()):.4f}, grow {cfg.grow_rule}, "
                    f"{cfg.density_schedule} density, {len(self.update_steps)} mask updates (first "
                    f"{self.update_steps[0]}, last {self.update_steps[-1]})")

    def layer_densities(self, density):
        """{name: density} of the recipe's distribution at overall ``density``."""
        cfg = self.cfg
        values = layer_densities(list(self.shapes.values()), density, cfg.density_distribution,
                                 cfg.dense_first_layer, cfg.erk_power_scale)
        return dict(zip(self.names, values))

    def _first_mask(self):
        """The constant schedule's first update: random masks before any training."""
        return self.cfg.density_schedule == "constant" and self.updates_done == 0

    def _rng(self, purpose):
        # one generator per update, from the seed and the update's number: identical on every
        # data-parallel worker and after a resume, without saving a generator state
        return np.random.default_rng([self.cfg.seed, self.updates_done + 1, purpose])

    def distribute(self, weights, density):
        if self._first_mask():
            return random_layer_masks(self.shapes, self.layer_densities(density), self._rng(0))
        if self.cfg.density_schedule == "constant":
            return self.masks()  # constant density: drop and grow inside the current topology
        return layer_masks_at(weights, self.layer_densities(density))

    def grow_signal(self, step, batch, ctx, weights):
        if self._first_mask() or self.cfg.grow_rule == "none":
            return None, None
        if self.cfg.grow_rule == "random":
            rng = self._rng(1)
            return {name: rng.random(w.shape, dtype=np.float32) for name, w in weights.items()}, None
        grads, task, _ = self.dense_gradient(step, batch, ctx)
        return grads, task

    def after_update(self, step, batch, ctx, weights, loss, event):
        event.update(task_loss=loss, grow_rule=self.cfg.grow_rule)
        return super().after_update(step, batch, ctx, weights, loss, event)
