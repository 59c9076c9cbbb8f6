"""What RPG and the RigL family share: the drop-and-grow keys (``delta``, ``alpha``,
``iterative_T_end_percent``, declared once here), RPG's exponential schedule, and the dense
gradient on the update iteration's batch that scores regrowth (RigL's grow signal; RPG adds its
rank loss to it).
"""
import numpy as np

from src.errors import ConfigError, TrainingError, require_finite_loss
from src.pruning.masks.hard_mask import HardMaskPruner
from src.pruning.masks.schedules import ExponentialSchedule
from src.recipe_keys import Key


class DropAndGrowPruner(HardMaskPruner):
    """Base of the drop-and-grow methods (RPG, RigL / SET / static): schedule keys, the dense
    gradient of the update iteration (which then skips its optimizer step, as RPG's and RigL's
    references do) and the update's log details."""

    keys = {
        "delta": Key(int, 100, 1, None, help_text="iterations between mask updates"),
        "alpha": Key(float, 0.3, 0.0, 1.0, help_text="initial drop-and-grow fraction"),
        "iterative_T_end_percent": Key(float, 0.9, 0.0, 1.0, low_open=True,
                                       help_text="target density reaches its final value here"),
    }
    # how errors name the iteration that failed, e.g. "loss is nan at step 5 (an RPG mask update)"
    update_label = "a mask update"

    @classmethod
    def check_recipe(cls, cfg):
        super().check_recipe(cfg)
        if cfg.iterative_T_end_percent > cfg.T_end_percent:
            raise ConfigError(f"config key 'iterative_T_end_percent': got {cfg.iterative_T_end_percent}, "
                              f"expected at most T_end_percent ({cfg.T_end_percent}): the density must "
                              "reach its target before mask updates stop")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.check_recipe(cfg)
        self.grad_cell = None

    def exponential_schedule(self):
        """RPG's schedule: d ** (r / R) at update r, an update every ``delta`` before T_end."""
        cfg = self.cfg
        try:
            return ExponentialSchedule(self.total_steps, cfg.delta, cfg.T_end_percent,
                                       cfg.iterative_T_end_percent, self.final_density, cfg.alpha)
        except ValueError as err:
            raise ConfigError(f"config keys 'delta' / 'T_end_percent': {err}") from None

    def dense_gradient(self, step, batch, ctx, extra_loss=None):
        """(grads {name: array}, task loss, extra loss Tensor): the unmasked gradient of task loss
        (+ ``extra_loss``) on this iteration's batch, averaged over data-parallel workers."""
        if self.grad_cell is None:
            self.grad_cell = ctx.dense_gradient_cell(self.names, extra_loss)
        _, task, extra, grads = self.grad_cell(*batch)
        task = float(task.asnumpy())
        require_finite_loss(task, step + 1, f" ({self.update_label})")  # before NaNs reach the masks
        grads = {name: g.asnumpy() for name, g in zip(self.names, grads)}
        bad = [name for name, grad in grads.items() if not np.isfinite(grad).all()]
        if bad:  # a NaN input can leave the loss finite; the masks must not be built from NaN
            raise TrainingError(f"non-finite dense gradient for {len(bad)} weight(s) (first: {bad[0]}) at "
                                f"step {step + 1} ({self.update_label}); stopping. The last good "
                                "checkpoint is left as it was: check the data or lower lr_max")
        return grads, task, extra

    def update_details(self, event):
        text = f" drop fraction {event['drop_fraction']:.4f} regrown {event['regrown']}"
        if event.get("task_loss") is not None:
            text += f" task loss {event['task_loss']:.4f}"
        return text
