"""The RigL family in the same engine as RPG: RigL (Evci et al. 2020), SET (Mocanu et al. 2018)
and static sparse training, as google-research/rigl defines them and as the RPG authors' code
offers them for comparison.

Three choices, each a recipe key:

- ``density_distribution`` (the key every unstructured method shares, declared on
  ``HardMaskPruner``; RigL's default ``erk``): how the density is shared among layers, ``uniform``
  or ``erk`` (src/pruning/masks/distributions.py; ``dense_first_layer``, ``erk_power_scale``),
  exact per-layer counts that add up to the target; ``global`` (one magnitude threshold) only with
  the exponential schedule.
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
from src.pruning.masks.drop_grow import DropAndGrowPruner
from src.pruning.masks.mask_ops import random_layer_masks
from src.pruning.masks.schedules import ConstantSchedule
from src.recipe_keys import Key

GROW_RULES = ("gradient", "random", "none")
DENSITY_SCHEDULES = ("constant", "exponential")


class RigLPruner(DropAndGrowPruner):
    name = "rigl"
    update_label = "a RigL mask update"
    key_defaults = {"density_distribution": "erk"}
    keys = {
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
        if cfg.density_distribution == "global" and cfg.density_schedule == "constant":
            raise ConfigError("config key 'density_distribution': 'global' (one magnitude threshold) needs "
                              "density_schedule 'exponential'; the constant schedule starts from random "
                              "masks at per-layer densities (uniform or erk)")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        if cfg.density_schedule == "constant":
            try:
                self.schedule = ConstantSchedule(self.total_steps, cfg.delta, cfg.T_end_percent,
                                                 self.final_density, cfg.alpha, cfg.grow_rule != "none")
            except ValueError as err:
                raise ConfigError(f"config keys 'delta' / 'T_end_percent': {err}") from None
        else:
            self.schedule = self.exponential_schedule()
        logger.info(f"rigl: {len(self.names)} masked weights, {self.allocation()}, grow {cfg.grow_rule}, "
                    f"{cfg.density_schedule} density, {len(self.update_steps)} mask updates (first "
                    f"{self.update_steps[0]}, last {self.update_steps[-1]})")

    def _first_mask(self):
        """The constant schedule's first update: random masks before any training."""
        return self.cfg.density_schedule == "constant" and self.updates_done == 0

    def _rng(self, purpose):
        # one generator per update, from the seed and the update's number: identical on every
        # data-parallel worker and after a resume, without saving a generator state
        return np.random.default_rng([self.cfg.seed, self.updates_done + 1, purpose])

    def distribute(self, weights, density):
        if self._first_mask():
            return random_layer_masks(self.shapes, self.layer_counts(density), self._rng(0))
        if self.cfg.density_schedule == "constant":
            return self.masks()  # constant density: drop and grow inside the current topology
        return super().distribute(weights, density)  # exponential: the distribution's magnitude masks

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
