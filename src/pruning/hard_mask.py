"""Shared machinery of the unstructured pruners (RPG, GMP): masks kept in the training graph, a
list of mask-update steps, state for resume, the final sparsity check."""
import numpy as np

from src.config import ConfigError
from src.errors import TrainingError
from src.pruning.base import Pruner, prunable_weight_names, sparsity_of

# The final sparsity may differ from the target by at most this much (0.1 percentage point).
SPARSITY_TOLERANCE = 1e-3


class FinalSparsityError(TrainingError):
    """Training ended with a sparsity that misses the target."""


class HardMaskPruner(Pruner):
    """Base of pruners whose pruned weights stay exactly zero between mask updates.

    Subclasses set ``self.update_steps`` (iterations before which a mask update happens) and
    implement ``update_masks(step, batch, ctx)``, returning the iteration's loss if they consumed
    the batch themselves, else None.
    """

    hard_masks = True

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.names = prunable_weight_names(net, cfg.prune_include, cfg.prune_exclude)
        if not self.names:
            raise ConfigError(f"config keys 'prune_include' / 'prune_exclude': {cfg.prune_include} / "
                              f"{cfg.prune_exclude} select no conv or FC weight of {cfg.net}")
        self.final_density = 1.0 - cfg.sparsity
        self.update_steps = []
        self.updates_done = 0
        self.layer_sparsity = np.zeros(len(self.names), np.float64)
        self.target_density = 1.0

    @property
    def mask_names(self):
        return list(self.names)

    @property
    def last_update_step(self):
        return self.update_steps[-1] if self.update_steps else 0

    def before_step(self, step, batch, ctx):
        if self.updates_done < len(self.update_steps) and step == self.update_steps[self.updates_done]:
            loss = self.update_masks(step, batch, ctx)
            self.updates_done += 1
            return loss
        return None

    def update_masks(self, step, batch, ctx):
        raise NotImplementedError

    def install(self, masks, ctx):
        """Put new boolean masks into the graph (zeroing weights and momentum) and record stats."""
        ctx.set_masks({name: mask.astype(np.float32) for name, mask in masks.items()})
        self.layer_sparsity = np.array([1.0 - masks[n].mean() for n in self.names])
        return sparsity_of([m.astype(np.uint8) for m in masks.values()])

    def mask_sparsity(self):
        sizes = np.array([int(np.prod(p.shape)) for p in self.net.trainable_params()
                          if p.name in set(self.names)], np.float64)
        return float((self.layer_sparsity * sizes).sum() / sizes.sum())

    def accept_best(self, step):
        # Only accuracies at the final sparsity count (the reference's later fix).
        return step > self.last_update_step

    def report(self):
        return {"sparsity": self.mask_sparsity()}

    def on_train_end(self, ctx):
        achieved = sparsity_of(ctx.get_weights(self.names).values())
        self.logger.info(f"final sparsity {achieved:.6f} over {len(self.names)} prunable weights "
                         f"(target {self.cfg.sparsity:.6f})")
        if abs(achieved - self.cfg.sparsity) > SPARSITY_TOLERANCE:
            raise FinalSparsityError(
                f"final sparsity {achieved:.4%} misses the target {self.cfg.sparsity:.4%} by more than "
                f"{SPARSITY_TOLERANCE:.1%} (mask updates done: {self.updates_done}/{len(self.update_steps)})")

    def state_dict(self):
        # The masks themselves are parameters of the train step and are saved with it.
        return {"updates_done": np.int64(self.updates_done),
                "layer_sparsity": self.layer_sparsity.astype(np.float64),
                "target_density": np.float64(self.target_density)}

    def load_state_dict(self, state):
        if "updates_done" not in state:
            raise ValueError("checkpoint has no pruner state for a pruning run")
        self.updates_done = int(state["updates_done"])
        self.layer_sparsity = np.asarray(state["layer_sparsity"], np.float64)
        self.target_density = float(state["target_density"])
