"""Hard masks: pruned weights stay exactly +0.0 between mask updates (RPG, GMP and any method
built on ``HardMaskPruner``).

``HardMasks`` is the graph piece (see ``train_cell``): inside every train step it zeroes the
gradients of pruned weights before the optimizer and, after it, sets pruned weights and their
optimizer state to +0.0 (weight decay cannot revive them either, since it acts through the
gradient). ``HardMaskPruner`` runs the generic mask update (``update.mask_update``) on the
method's schedule; a method supplies its schedule and grow score. The per-layer targets come from
``density_distribution``, one key for every unstructured method: ``global`` (one magnitude
threshold over all layers, RPG's reference), ``uniform`` or ``erk`` (``distributions.py``: exact
per-layer counts adding up to the target, the largest |w| of each layer).
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

from src.errors import ConfigError, TrainingError
from src.pruning.core.base import Pruner, prunable_weight_names, sparsity_of, unmatched_patterns
from src.pruning.core.train_cell import optimizer_state
from src.pruning.masks.distributions import ALLOCATIONS, layer_counts
from src.pruning.masks.mask_ops import global_magnitude_masks, layer_magnitude_masks
from src.pruning.masks.update import mask_update
from src.recipe_keys import PRUNING_BASE_KEYS, Key

MASK_PREFIX = "pruning_mask."
# The final sparsity may differ from the target by at most this much (0.1 percentage point).
SPARSITY_TOLERANCE = 1e-3


class FinalSparsityError(TrainingError):
    """Training ended with a sparsity that misses the target."""


class _ZeroOutside(nn.Cell):
    """Sets tensors to +0.0 where their mask is 0 (``select``, not a multiply: w * 0 gives -0.0
    for negative w, and sparse encodings compare bits)."""

    def __init__(self, masks, tensors, mask_of):
        super().__init__(auto_prefix=False)
        self.masks = masks
        self.tensors = ParameterTuple(tensors)
        self.mask_of = tuple(mask_of)
        self.count = len(tensors)

    def construct(self):
        done = ops.zeros((), ms.float32)
        for i in range(self.count):
            tensor = self.tensors[i]
            keep = self.masks[self.mask_of[i]] > 0
            done = ops.depend(done, ops.assign(tensor, ops.select(keep, tensor, ops.zeros_like(tensor))))
        return done


class HardMasks(nn.Cell):
    """Graph piece: one float32 mask per named weight, applied to its gradient before the
    optimizer and to the weight and its optimizer state after it."""

    def __init__(self, optimizer, names):
        super().__init__(auto_prefix=False)
        params = {p.name: p for p in optimizer.parameters}
        state = optimizer_state(optimizer, names)
        self.names = list(names)
        self.masks = ParameterTuple([
            Parameter(Tensor(np.ones(params[n].shape, np.float32)), name=MASK_PREFIX + n,
                      requires_grad=False) for n in names])
        self.mask_slot = tuple(self.names.index(p.name) if p.name in params and p.name in self.names
                               else -1 for p in optimizer.parameters)
        self.num_params = len(self.mask_slot)
        tensors, mask_of = [], []
        for slot, name in enumerate(names):
            for tensor in [params[name]] + state[name]:
                tensors.append(tensor)
                mask_of.append(slot)
        self.zero_outside = _ZeroOutside(self.masks, tensors, mask_of)

    def on_gradients(self, grads):
        masked = ()
        for i in range(self.num_params):
            slot = self.mask_slot[i]
            if slot >= 0:
                masked = masked + (grads[i] * self.masks[slot],)
            else:
                masked = masked + (grads[i],)
        return masked

    def after_update(self):
        return self.zero_outside()

    def read(self):
        """{weight name: bool mask} (host copies)."""
        return {name: p.asnumpy() > 0 for name, p in zip(self.names, self.masks)}

    def install(self, masks):
        """New boolean masks into the graph (one host -> device copy each); the weights and their
        optimizer state outside them are zeroed on the device."""
        for name, param in zip(self.names, self.masks):
            if name in masks:
                param.set_data(Tensor(np.asarray(masks[name], np.float32).reshape(param.shape)))
        self.zero_outside()


class HardMaskPruner(Pruner):
    """Base of the unstructured methods: masks in the graph, a schedule of mask updates, the
    generic update, state for resume and the final sparsity check.

    A method sets ``self.schedule`` (``update_steps``, ``density(index, step)``,
    ``drop_fraction(step)``) and may override ``distribute`` (per-layer target masks; default:
    ``density_distribution``) and ``grow_signal`` (grow scores, and the iteration's loss when
    the method consumed the batch). ``key_defaults`` on a subclass gives a shared key another
    default for that method (RigL: erk)."""

    base_keys_read = PRUNING_BASE_KEYS
    keys = {
        "T_end_percent": Key(float, 0.901, 0.0, 1.0, low_open=True,
                             help_text="mask updates stop at this fraction of training"),
        "density_distribution": Key(str, "global", choices=list(ALLOCATIONS),
                                    help_text="how the density is shared among layers: one global magnitude "
                                              "threshold (RPG/GMP reference), uniform, or Erdos-Renyi-Kernel"),
        "erk_power_scale": Key(float, 1.0, 0.0, 10.0,
                               help_text="exponent of ERK's shape factor (RigL's; 0 = uniform, 1 = ERK)"),
        "dense_first_layer": Key(bool, False, help_text="keep the first masked layer dense (the others "
                                                        "share its budget; uniform or erk)"),
        "bn_recalibration": Key(int, 0, 0, None,
                                help_text="after the last step, re-estimate the BatchNorm statistics exactly on "
                                          "this many training batches (0: keep the moving averages, the "
                                          "reference); for 99 %+ runs whose statistics went stale"),
    }

    @classmethod
    def check_recipe(cls, cfg):
        if cfg.dense_first_layer and cfg.density_distribution == "global":
            raise ConfigError("config key 'dense_first_layer': needs density_distribution uniform or erk "
                              "(global ranks every layer against one magnitude threshold)")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        unmatched = unmatched_patterns(net, cfg.prune_include, cfg.prune_exclude)
        if unmatched:
            key, pattern = unmatched[0]
            raise ConfigError(f"config key '{key}': pattern '{pattern}' matches no conv or FC weight "
                              "of the network")
        self.names = prunable_weight_names(net, cfg.prune_include, cfg.prune_exclude)
        if not self.names:
            raise ConfigError(f"config keys 'prune_include' / 'prune_exclude': {cfg.prune_include} / "
                              f"{cfg.prune_exclude} select no conv or FC weight of the network")
        self.final_density = 1.0 - cfg.sparsity
        params = {p.name: p for p in net.trainable_params()}
        self.shapes = {n: tuple(params[n].shape) for n in self.names}
        if cfg.density_distribution != "global":
            try:
                self.final_counts = self.layer_counts(self.final_density)
            except ValueError as err:
                raise ConfigError(f"config keys 'sparsity' / 'density_distribution': {err}") from None
        self.schedule = None
        self.updates_done = 0
        self.layer_sparsity = np.zeros(len(self.names), np.float64)
        self.target_density = 1.0
        self.masks_piece = None

    @property
    def update_steps(self):
        return self.schedule.update_steps

    def graph_pieces(self, optimizer):
        self.masks_piece = HardMasks(optimizer, self.names)
        return [self.masks_piece]

    def masks(self):
        return self.masks_piece.read()

    @property
    def last_update_step(self):
        return self.update_steps[-1] if self.update_steps else 0

    def before_step(self, step, batch, ctx):
        if self.updates_done < len(self.update_steps) and step == self.update_steps[self.updates_done]:
            loss = self.update_masks(step, batch, ctx)
            self.updates_done += 1
            return loss
        return None

    # --- the generic update --------------------------------------------------------------------
    def layer_counts(self, density):
        """{name: weights kept} of the recipe's distribution (uniform | erk) at overall
        ``density``; they add up to exactly round(density * N)."""
        cfg = self.cfg
        counts = layer_counts(list(self.shapes.values()), density, cfg.density_distribution,
                              cfg.dense_first_layer, cfg.erk_power_scale)
        return dict(zip(self.names, counts))

    def allocation(self):
        """The density_distribution for the start-up log line, with the final per-layer range."""
        if self.cfg.density_distribution == "global":
            return "global magnitude"
        densities = [self.final_counts[n] / np.prod(s) for n, s in self.shapes.items()]
        return f"{self.cfg.density_distribution} densities {min(densities):.4f}..{max(densities):.4f}"

    def distribute(self, weights, density):
        """Per-layer target masks at ``density``: one global magnitude threshold (RPG's
        reference), or the largest |w| of each layer at the distribution's counts."""
        if self.cfg.density_distribution == "global":
            return global_magnitude_masks(weights, density)
        return layer_magnitude_masks(weights, self.layer_counts(density))

    def grow_signal(self, step, batch, ctx, weights):
        """(grow scores {name: array} or None for no regrowth, the iteration's loss or None)."""
        return None, None

    def update_masks(self, step, batch, ctx):
        weights = ctx.get_weights(self.names)            # the only device -> host copy
        scores, loss = self.grow_signal(step, batch, ctx, weights)
        self.target_density = self.schedule.density(self.updates_done + 1, step)
        fraction = self.schedule.drop_fraction(step) if scores is not None else 0.0
        target = self.distribute(weights, self.target_density)
        masks, weights, regrown = mask_update(weights, target, scores, fraction)
        ctx.set_weights(weights)                         # the only host -> device copy
        self.masks_piece.install(masks)
        self.layer_sparsity = np.array([1.0 - masks[n].mean() for n in self.names])
        sparsity = sparsity_of([m.astype(np.uint8) for m in masks.values()])
        empty = [n for n, layer_sparsity in zip(self.names, self.layer_sparsity) if layer_sparsity == 1.0]
        if empty:  # a whole layer cut: the network's output no longer depends on its input
            per_layer = "density_distribution erk, " if self.cfg.density_distribution == "global" else ""
            self.logger.warning(f"{self.name}: {len(empty)} layer(s) have no weight left at density "
                                f"{self.target_density:.6f} (first: {empty[0]}); use {per_layer}exclude "
                                "them from pruning (prune_exclude) or lower the sparsity")
        # before_iteration: the update runs before iteration step + 1, after a checkpoint at step
        event = {"event": "mask_update", "method": self.name, "update": self.updates_done + 1,
                 "updates": len(self.update_steps), "step": step, "before_iteration": True,
                 "target_density": self.target_density, "sparsity": sparsity,
                 "drop_fraction": fraction, "regrown": regrown, "empty_layers": len(empty)}
        return self.after_update(step, batch, ctx, weights, loss, event)

    def after_update(self, step, batch, ctx, weights, loss, event):
        """Log and record the update; returns the iteration's loss (None: the ordinary step runs)."""
        ctx.record(event)
        self.logger.info(f"{self.name} mask update {event['update']}/{event['updates']} at step "
                         f"{step}: target density {event['target_density']:.6f} sparsity "
                         f"{event['sparsity']:.6f}" + self.update_details(event))
        return loss

    def update_details(self, event):
        return ""

    # --- bookkeeping ---------------------------------------------------------------------------
    def mask_sparsity(self):
        sizes = np.array([int(np.prod(p.shape)) for p in self.net.trainable_params()
                          if p.name in set(self.names)], np.float64)
        return float((self.layer_sparsity * sizes).sum() / sizes.sum())

    def accept_best(self, step):
        # Only accuracies at the final sparsity count (the reference's later fix).
        return step > self.last_update_step

    def report(self):
        return {"sparsity": self.mask_sparsity()}

    def on_epoch_end(self, epoch, ctx):
        """``bn_recalibration``: at the end of the last epoch (before its evaluation), the BatchNorm
        statistics are re-estimated exactly on training batches (no weight changes)."""
        if self.cfg.bn_recalibration and epoch + 1 == self.cfg.epoch_size:
            self.reestimate_bn(ctx, self.cfg.bn_recalibration, "after the last step")

    def on_train_end(self, ctx):
        """The masks must hold the target sparsity (within SPARSITY_TOLERANCE) and every weight
        outside them must be exactly zero. The masks, not the zeros, are the topology: a weight
        regrown at 0 whose gradient stays 0 (a dead unit) is kept by its mask."""
        masks = self.masks()
        achieved = 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        weights = ctx.get_weights(self.names)
        alive = [n for n in self.names if np.any(weights[n][~masks[n]] != 0)]
        if alive:  # a broken invariant of the train step, not a user error
            raise RuntimeError(f"{len(alive)} weight tensor(s) have non-zero values outside their "
                               f"mask (first: {alive[0]})")
        self.logger.info(f"final sparsity {achieved:.6f} over {len(self.names)} prunable weights "
                         f"(target {self.cfg.sparsity:.6f})")
        if abs(achieved - self.cfg.sparsity) > SPARSITY_TOLERANCE:
            raise FinalSparsityError(
                f"final sparsity {achieved:.4%} misses the target {self.cfg.sparsity:.4%} by more than "
                f"{SPARSITY_TOLERANCE:.1%} (mask updates done: {self.updates_done}/{len(self.update_steps)})")
        return {}

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
