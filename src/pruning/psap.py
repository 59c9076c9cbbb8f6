"""PSAP: protective self-adaptive soft filter pruning of ResNets.

What follows the PSAP abstract (arXiv 2303.11881; no full text or code is public):
iterative prune-train filter pruning; each layer's pruning ratio set by its own weight sparsity
before each pruning step; a protective mechanism that watches gradients so that important filters
are not pruned and pruned ones can be reconstructed.

Design choices of this project (where the abstract is silent), see docs/PSAP.md:
- soft pruning as in SFP: pruned filters are zeroed (weights and momentum) at each pruning step but
  keep receiving gradients and may regrow; they are removed physically only at the end;
- global target on an ASFP-shaped curve reaching ``psap_ratio`` at ``psap_end_epoch``, as a
  fraction of prunable filters or of the dense network's MACs;
- layer ratio proportional to the layer's weight sparsity (measured over the filters it kept at the
  previous step, so that the filters it zeroed itself do not feed back into its own ratio),
  capped by ``max_layer_ratio`` and rescaled so the global target is met exactly;
- filter score L2 norm or FPGM distance; protection from gradient energies sum(grad^2) per filter
  (zeroed filters whose energy exceeds ``protect_tau`` times the median energy of the layer's kept
  filters are excluded from the candidates for ``protect_steps`` steps);
- ``protect_energy: normalized`` (default): the energies are taken on the first training step after
  a pruning step, when the zeroed filters are exactly zero, and compared after dividing out each
  filter's BatchNorm scale (see ``bn_normalized_energy`` for why both are needed: the raw energy of
  a zeroed filter is set by its BN's 1/sqrt(eps) factor, not by what the filter is worth);
  ``raw``: the literal design, sum(grad^2) accumulated over the whole interval, compared as is;
- only inner convs of residual blocks are pruned (``src.pruning.surgery``); at the last pruning
  step the BN gamma and beta of the pruned filters are zeroed too, so the pruned channels output
  exactly 0 and the compact network equals the masked one (see ``_prune_step``).
"""
import math
import os

import numpy as np

from src.checkpoint import save_atomic
from src.config import ConfigError, Key, add_keys
from src.errors import TrainingError
from src.models.flops import count_macs_params, layer_records
from src.pruning.base import Pruner
from src.pruning.surgery import compact_network, plan_removal, prunable_layers, zero_filters

add_keys({
    "psap_target": Key(str, "flops", choices=["filters", "flops"],
                       help_text="psap_ratio is a fraction of prunable filters or of the dense MACs"),
    "psap_ratio": Key(float, 0.4, 0.0, 1.0, high_open=True,
                      help_text="final fraction of prunable filters (or of MACs) to remove"),
    "psap_interval_epochs": Key(int, 1, 1, None, help_text="epochs between pruning steps"),
    "psap_curve_k": Key(float, 4.0, 0.0, 100.0,
                        help_text="shape of P(t)=P(1-exp(-k t/T))/(1-exp(-k)); 0 = linear"),
    "psap_end_epoch": Key(int, 0, 0, None,
                          help_text="epoch at which P(t) reaches psap_ratio; 0 = last epoch, "
                                    "1 = full ratio from the first step (SFP)"),
    "psap_eps": Key(float, 0.05, 0.0, 1.0, low_open=True, high_open=True,
                    help_text="a weight counts as sparse when |w| < psap_eps * max|W| of its layer"),
    "max_layer_ratio": Key(float, 0.8, 0.0, 1.0, low_open=True,
                           help_text="cap on the fraction of filters pruned in one layer"),
    "filter_score": Key(str, "l2", choices=["l2", "fpgm"]),
    "protect_tau": Key(float, 1.0, 0.0, None, low_open=True,
                       help_text="protect a zeroed filter whose gradient energy exceeds tau x the "
                                 "median of the layer's kept filters"),
    "protect_steps": Key(int, 2, 1, None, help_text="pruning steps a protected filter is spared"),
    "protect_energy": Key(str, "normalized", choices=["normalized", "raw"],
                          help_text="normalized: gradient energy of the first step after a pruning "
                                    "step with the BN scale divided out (default); raw: sum(grad^2) "
                                    "over the whole interval, as is"),
    "psap_adaptive": Key(bool, True, help_text="false = uniform layer ratios (SFP baseline)"),
    "psap_protect": Key(bool, True, help_text="false = no protection (SFP baseline)"),
})

TARGET_TOLERANCE = 0.01


class PruningTargetError(TrainingError, ValueError):
    """The compact network misses the configured pruning ratio (a one-line error for the CLI)."""


# --------------------------------------------------------------------------- pure functions

def asfp_target(epoch, final_ratio, end_epoch, k):
    """Global pruning target after ``epoch`` finished epochs.

    ASFP-shaped: P(t) = P * (1 - exp(-k t / T)) / (1 - exp(-k)), normalised so it equals P at
    t = T = ``end_epoch`` and stays there; k = 0 is the linear ramp P * t / T.
    """
    if end_epoch < 1:
        raise ValueError(f"end_epoch must be >= 1, got {end_epoch}")
    if epoch >= end_epoch:
        return float(final_ratio)
    t = max(epoch, 0) / end_epoch
    if k == 0:
        return float(final_ratio * t)
    return float(final_ratio * (1.0 - math.exp(-k * t)) / (1.0 - math.exp(-k)))


def weight_sparsity_ratio(weight, eps, exclude=None):
    """Fraction of weights with |w| < eps * max|W| (the layer's weight sparsity ratio).

    ``exclude``: optional boolean (C_out,) of filters left out of the count (the max is still
    taken over the whole layer). An all-zero layer has sparsity 1.
    """
    weight = np.abs(np.asarray(weight, dtype=np.float64))
    peak = weight.max() if weight.size else 0.0
    if peak == 0:
        return 1.0
    if exclude is not None and not np.all(exclude):
        weight = weight[~np.asarray(exclude, dtype=bool)]
    return float(np.mean(weight < eps * peak))


def _water_fill(weights, sizes, lower, caps, unit_costs, target):
    """Continuous counts x_l = clip(alpha * w_l * n_l, lower_l, cap_l) (lower_l where w_l = 0)
    with sum(u_l x_l) = target, or the nearest bound when the target lies outside."""
    active = weights > 0
    full = np.where(active, caps, lower)
    if not np.any(active) or np.dot(unit_costs, full) <= target:
        return full
    if np.dot(unit_costs, lower) >= target:
        return lower.copy()
    demand = np.where(active, weights * sizes, 0.0)
    low, high = 0.0, float(np.max(np.where(active, caps / np.where(active, demand, 1.0), 0.0)))
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.dot(unit_costs, np.clip(mid * demand, lower, caps)) < target:
            low = mid
        else:
            high = mid
    return np.clip(high * demand, lower, caps)


def adaptive_layer_ratios(sparsities, filter_counts, global_ratio, max_ratio, costs=None,
                          total_cost=None, available=None, minimum=None):
    """Integer number of filters to prune per layer.

    Layer ratio P_l = clip(alpha * global_ratio * s_l / s_mean, lower_l, cap_l), s_mean the
    filter-weighted mean sparsity, alpha chosen so the total meets the target:
    - ``costs=None``: sum(counts) == round(global_ratio * sum(filter_counts)) exactly;
    - ``costs`` (per-filter cost of each layer, e.g. MACs a filter removes): sum(counts * costs)
      as close as integer counts allow to global_ratio * total_cost (default sum(n_l * c_l)).
    cap_l = min(floor(max_ratio * n_l), n_l - 1, available_l): every layer keeps a filter.
    ``minimum`` (lower_l, default 0): filters a layer must count in any case (PSAP: filters that
    are already exactly zero and cannot come back); it overrides the max_ratio cap, and if the
    minimums alone exceed the target they are returned as they are.
    Layers with zero sparsity get no share unless the others cannot absorb the target; then the
    rest is spread uniformly. Raises ValueError if the caps cannot hold the target.
    """
    s = np.maximum(np.asarray(sparsities, dtype=np.float64), 0.0)
    n = np.asarray(filter_counts, dtype=np.int64)
    caps = np.minimum(np.floor(max_ratio * n + 1e-9).astype(np.int64), n - 1)
    if available is not None:
        caps = np.minimum(caps, np.asarray(available, dtype=np.int64))
    lower = np.zeros(len(n), dtype=np.int64) if minimum is None else \
        np.minimum(np.asarray(minimum, dtype=np.int64), n - 1)
    caps = np.maximum(np.maximum(caps, lower), 0)
    unit = np.ones(len(n)) if costs is None else np.asarray(costs, dtype=np.float64)
    if costs is None:
        target = float(int(round(global_ratio * n.sum())))
    else:
        total = float(np.dot(n, unit)) if total_cost is None else float(total_cost)
        target = global_ratio * total
    if np.dot(unit, caps) < target - 1e-9:
        raise ValueError(f"pruning target {global_ratio:.4f} cannot be met with the per-layer "
                         f"caps (max_layer_ratio={max_ratio}, protected filters excluded)")
    s_mean = np.dot(n, s) / n.sum()
    weights = s / s_mean if s_mean > 0 else np.ones(len(n))
    sizes = n.astype(np.float64)
    x = _water_fill(weights, sizes, lower.astype(np.float64), caps.astype(np.float64), unit, target)
    if target - np.dot(unit, x) > 1e-9:  # sparse layers are full: level the rest uniformly
        room = (caps - x > 1e-9).astype(np.float64)
        x = _water_fill(room, sizes, x, caps.astype(np.float64), unit, target)

    counts = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    fraction = x - counts
    order = np.argsort(-fraction, kind="stable")
    if costs is None:
        missing = int(target) - int(counts.sum())
        while missing > 0:
            progressed = False
            for layer in order:
                if missing == 0:
                    break
                if counts[layer] < caps[layer]:
                    counts[layer] += 1
                    missing -= 1
                    progressed = True
            if not progressed:
                break
        for layer in order[::-1]:  # float slack only: never more than one per layer
            if missing >= 0:
                break
            if counts[layer] > lower[layer]:
                counts[layer] -= 1
                missing += 1
        return counts
    remainder = target - float(np.dot(counts, unit))
    while True:
        for layer in order:
            if counts[layer] < caps[layer] and unit[layer] < 2 * remainder:
                counts[layer] += 1
                remainder -= unit[layer]
                break
        else:
            return counts


def filter_scores(weight, kind="l2"):
    """Importance of each output filter (low = prune first).

    l2: the filter's L2 norm (SFP). fpgm: the sum of Euclidean distances to the layer's other
    filters (FPGM: filters near the geometric median are the most replaceable).
    """
    flat = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    if kind == "l2":
        return np.sqrt(np.sum(flat ** 2, axis=1))
    if kind == "fpgm":
        sq = np.sum(flat ** 2, axis=1)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
        return np.sqrt(dist2).sum(axis=1)
    raise ValueError(f"unknown filter score '{kind}'; choose l2 or fpgm")


def protected_filters(energy_zeroed, energy_kept, tau):
    """Boolean per zeroed filter: its gradient energy exceeds tau * median(kept energies)."""
    energy_zeroed = np.asarray(energy_zeroed, dtype=np.float64)
    energy_kept = np.asarray(energy_kept, dtype=np.float64)
    if energy_zeroed.size == 0 or energy_kept.size == 0:
        return np.zeros(energy_zeroed.shape, dtype=bool)
    return energy_zeroed > tau * float(np.median(energy_kept))


BN_TINY = 1e-12   # floor on gamma^2 in bn_normalized_energy


def bn_normalized_energy(energy, gamma, variance, eps, tiny=BN_TINY):
    """Gradient energy of each filter with its BatchNorm scale divided out:
    G_j * (var_j + eps) / max(gamma_j^2, tiny).

    The conv output z_j of filter j goes through BN in training mode,
    y = gamma_j * (z_j - mean_B) / sqrt(var_B + eps) + beta_j, whose backward is
        dL/dz_j = gamma_j / sqrt(var_B + eps) * (g - mean(g) - z_hat * mean(g * z_hat)),
    with g = dL/dy and z_hat the normalised pre-activation. The conv weight gradient is linear in
    dL/dz_j, so sum(grad^2) carries the factor gamma_j^2 / (var_B + eps); multiplying it by
    (var_B + eps) / gamma_j^2 leaves the energy of sum(x * (g - ...)), the same quantity for a
    zeroed and a kept filter. Without it a zeroed filter (var_B = 0) whose ReLU passes the
    constant beta_j > 0 shows gamma_j^2 / eps ~ 1e5 times the energy (a 316x gradient for eps 1e-5)
    whatever it is worth, and one with beta_j <= 0 (dead ReLU) exactly 0.

    ``variance`` must be the batch variance of the step the energy was measured on: exactly 0 for
    a filter whose weights are exactly 0, about the moving variance for the others (see
    ``PSAPPruner.after_step``). gamma_j = 0 gives energy 0 exactly (no gradient flows), so the
    ``tiny`` floor on gamma^2 only avoids 0/0.
    """
    energy = np.asarray(energy, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    variance = np.maximum(np.asarray(variance, dtype=np.float64), 0.0)
    return energy * (variance + eps) / np.maximum(gamma ** 2, tiny)


def removed_macs(records, layers, counts):
    """MACs removed when ``counts[l]`` output filters of prunable layer l (and the matching input
    channels of its next conv) are removed; exact, bilinear where both sides of a conv shrink."""
    out_cut = {layer["conv"]: int(c) for layer, c in zip(layers, counts)}
    in_cut = {layer["next_conv"]: int(c) for layer, c in zip(layers, counts)}
    removed = 0
    for r in records:
        cut_out, cut_in = out_cut.get(r["name"], 0), in_cut.get(r["name"], 0)
        if cut_out or cut_in:
            per_pair = r["macs"] // (r["c_out"] * r["c_in"])
            removed += r["macs"] - (r["c_out"] - cut_out) * (r["c_in"] - cut_in) * per_pair
    return removed


def filter_costs(records, layers):
    """MACs one filter of each prunable layer removes: its share of its own conv plus its input
    share of the next conv (at dense widths)."""
    by_name = {r["name"]: r for r in records}
    costs = []
    for layer in layers:
        own, nxt = by_name[layer["conv"]], by_name[layer["next_conv"]]
        costs.append(own["macs"] / own["c_out"] + nxt["macs"] / nxt["c_in"])
    return np.asarray(costs)


def flops_layer_counts(sparsities, filter_counts, flops_ratio, max_ratio, records, layers,
                       available=None, minimum=None):
    """Per-layer counts whose exact MAC reduction is closest to ``flops_ratio`` of the dense MACs.

    Linear per-filter costs overestimate the saving where both convs of a bottleneck pair shrink
    (the bilinear overlap), so the linear target is raised by bisection until the exact count
    meets the requested ratio.
    """
    dense = sum(r["macs"] for r in records)
    costs = filter_costs(records, layers)
    target = flops_ratio * dense

    def attempt(requested):
        counts = adaptive_layer_ratios(sparsities, filter_counts, requested, max_ratio,
                                       costs=costs, total_cost=dense, available=available,
                                       minimum=minimum)
        return counts, removed_macs(records, layers, counts)

    best_counts, best_removed = attempt(flops_ratio)
    if best_removed >= target or flops_ratio == 0:
        return best_counts
    low = flops_ratio
    high = _max_linear_ratio(filter_counts, max_ratio, costs, dense, available, minimum)
    for _ in range(40):
        mid = 0.5 * (low + high)
        counts, removed = attempt(mid)
        if abs(removed - target) < abs(best_removed - target):
            best_counts, best_removed = counts, removed
        if removed < target:
            low = mid
        else:
            high = mid
    return best_counts


def _max_linear_ratio(filter_counts, max_ratio, costs, dense, available, minimum):
    n = np.asarray(filter_counts, dtype=np.int64)
    caps = np.minimum(np.floor(max_ratio * n + 1e-9).astype(np.int64), n - 1)
    if available is not None:
        caps = np.minimum(caps, np.asarray(available, dtype=np.int64))
    if minimum is not None:
        caps = np.maximum(caps, np.minimum(np.asarray(minimum, dtype=np.int64), n - 1))
    return float(np.dot(np.maximum(caps, 0), costs)) / dense * (1 - 1e-12)


def _compact_ratios(ratios):
    return "[" + " ".join(f"{r:.2f}" for r in ratios) + "]"


# --------------------------------------------------------------------------- the pruner

class PSAPPruner(Pruner):
    """Soft filter pruning with sparsity-adaptive layer ratios and gradient-energy protection."""

    name = "psap"
    hard_masks = False

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.layers = prunable_layers(net)
        self.conv_names = [layer["conv"] for layer in self.layers]
        shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
        self.filter_counts = np.array([shapes[n][0] for n in self.conv_names], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.filter_counts)])
        self.end_epoch = cfg.psap_end_epoch or cfg.epoch_size
        if self.end_epoch > cfg.epoch_size:
            # a shortened run (e.g. --epoch_size 2 on a 6-epoch recipe) reaches the ratio at its end
            logger.info(f"psap: psap_end_epoch {cfg.psap_end_epoch} is past the last epoch; the "
                        f"target is reached at epoch {cfg.epoch_size}")
            self.end_epoch = cfg.epoch_size
        self._records = None
        self._records_shape = None
        self._check_feasible(self._geometry(None))
        total = int(self.filter_counts.sum())
        self.steps_done = 0
        self.zeroed = np.zeros(total, dtype=bool)       # filters zeroed at the last step
        self.protect = np.zeros(total, dtype=np.int32)  # remaining protected steps
        self.current_target = 0.0
        self.final_done = False
        self.last_counts = np.zeros(len(self.layers), dtype=np.int64)
        # protect_energy normalized: per-filter energies measured on the first step after the last
        # pruning step (see after_step); NaN until measured
        self.measured = np.full(total, np.nan, dtype=np.float64)
        self.last_energy = {}   # per layer: the compared energies and zeroed flags of the last step

    # -- plug-in contract --------------------------------------------------------------
    @property
    def energy_names(self):
        return list(self.conv_names)

    def after_step(self, step, ctx):
        """protect_energy normalized: measure the energies on the first step after a pruning step.

        Why that step only: a zeroed filter whose ReLU passes beta > 0 gets a gradient scaled by
        gamma / sqrt(eps) on that step (its batch variance is 0) and typically jumps to a norm
        far above the kept filters' (BN makes the layer invariant to the filter's scale, nothing
        pulls it back); from then on its batch variance is neither 0 nor its moving variance, so
        energies accumulated over the interval cannot be put on a common scale. On the first
        step the state is known exactly: zeroed filters are exactly 0 and their batch variance is
        exactly 0, the kept filters' batch variance is about their moving variance.
        Measured on Fashion-MNIST ResNet-20 (4 epochs, 2048 images): energies accumulated over the
        interval put the live zeroed filters at 1e4-1e11 x the kept median raw, and at 1e7-1e13 x
        once normalised with the BN statistics of the pruning step (the regrown filters' moving
        variance is ~1e5); on the first step they lie at 0.3-50 x, the kept ones at 0.03-27 x.
        """
        if not (self.cfg.psap_protect and self.cfg.protect_energy == "normalized"):
            return
        if self.steps_done == 0 or step % self.steps_per_epoch != 0:
            return
        epoch = step // self.steps_per_epoch   # the epoch this step belongs to
        if epoch == 0 or epoch % self.cfg.psap_interval_epochs != 0:
            return                             # the previous epoch ended without a pruning step
        energy = ctx.read_energy(reset=False)  # the buffer was reset at the pruning step
        self.measured[:] = np.nan
        compared = self._normalized_energy(energy, ctx)
        for i, name in enumerate(self.conv_names):
            if name in compared:
                self.measured[self._slice(i)] = compared[name]

    def on_epoch_end(self, epoch, ctx):
        last = epoch >= self.cfg.epoch_size - 1
        if last or (epoch + 1) % self.cfg.psap_interval_epochs == 0:
            self._prune_step(epoch, ctx, final=last)

    def on_train_end(self, ctx):
        if not self.final_done:
            self.logger.warning("psap: the last epoch had no pruning step; pruning now")
            self._prune_step(self.cfg.epoch_size - 1, ctx, final=True)
        cfg = self.cfg
        shape = tuple(ctx.input_shape)
        arrays = {p.name: p.asnumpy() for p in ctx.net.get_parameters()}
        plans = plan_removal(arrays, self.layers)
        kept_constant = sum(len(p["kept_constant"]) for p in plans)
        if kept_constant:
            self.logger.warning("psap: %d zero filters kept: their constant output cannot be "
                                "folded exactly", kept_constant)
        compact, widths = compact_network(ctx.net, cfg, plans)
        dense_macs, dense_params = count_macs_params(ctx.net, shape)
        compact_macs, compact_params = count_macs_params(compact, shape)
        kept_filters = sum(len(p["keep"]) for p in plans)
        total_filters = int(self.filter_counts.sum())
        filter_ratio = 1.0 - kept_filters / total_filters
        flops_ratio = 1.0 - compact_macs / dense_macs
        achieved = flops_ratio if cfg.psap_target == "flops" else filter_ratio
        path = os.path.join(ctx.output_dir, "last_compact.ckpt")
        meta = {"inner_widths": widths, "net": cfg.net, "prune_method": "psap",
                "dense_macs": int(dense_macs), "compact_macs": int(compact_macs),
                "dense_params": int(dense_params), "compact_params": int(compact_params),
                "psap_target": cfg.psap_target, "psap_ratio": float(cfg.psap_ratio),
                "achieved_ratio": float(achieved), "input_shape": list(shape)}
        if getattr(ctx, "rank", 0) == 0:
            save_atomic(compact, path, meta=meta)
        self.logger.info(
            "psap: compact network saved to %s: MACs %d -> %d (-%.2f%%), params %d -> %d "
            "(-%.2f%%), prunable filters %d -> %d (-%.2f%%)", path, dense_macs, compact_macs,
            100 * flops_ratio, dense_params, compact_params,
            100 * (1 - compact_params / dense_params), total_filters, kept_filters,
            100 * filter_ratio)
        if abs(achieved - cfg.psap_ratio) > TARGET_TOLERANCE:
            raise PruningTargetError(f"psap: achieved {cfg.psap_target} ratio {achieved:.4f} "
                                     f"misses the target {cfg.psap_ratio:.4f} by more than "
                                     f"{TARGET_TOLERANCE}")
        return compact, widths

    def state_dict(self):
        return {"psap_steps_done": np.int64(self.steps_done),
                "psap_zeroed": self.zeroed.astype(np.int32),
                "psap_protect": self.protect.astype(np.int32),
                "psap_current_target": np.float64(self.current_target),
                "psap_final_done": np.int64(int(self.final_done)),
                "psap_measured_energy": self.measured.astype(np.float64)}

    def load_state_dict(self, state):
        if not state:
            return
        zeroed = np.asarray(state["psap_zeroed"]).astype(bool).reshape(-1)
        if zeroed.size != self.zeroed.size:
            raise ValueError(f"psap state holds {zeroed.size} filters, the network has "
                             f"{self.zeroed.size} prunable filters (another network?)")
        self.zeroed = zeroed
        self.protect = np.asarray(state["psap_protect"]).astype(np.int32).reshape(-1)
        self.steps_done = int(np.asarray(state["psap_steps_done"]))
        self.current_target = float(np.asarray(state["psap_current_target"]))
        self.final_done = bool(int(np.asarray(state["psap_final_done"])))
        measured = state.get("psap_measured_energy")   # absent in checkpoints of older versions
        self.measured = np.full(self.zeroed.size, np.nan) if measured is None else \
            np.asarray(measured, dtype=np.float64).reshape(-1)

    def report(self):
        return {"psap_target": round(self.current_target, 4),
                "filters_zeroed": round(float(self.zeroed.mean()), 4) if self.zeroed.size else 0.0}

    # -- internals ---------------------------------------------------------------------
    def _geometry(self, input_shape):
        if input_shape is None:
            size = self.cfg.image_size
            if not size:
                from src.dataset import dataset_info
                size = dataset_info(self.cfg.dataset)["image_size"]
            input_shape = (1, self.cfg.in_channels, size, size)
        shape = tuple(int(v) for v in input_shape)
        if self._records is None or shape != self._records_shape:
            self._records = layer_records(self.net, shape)
            self._records_shape = shape
        return self._records

    def _check_feasible(self, records):
        caps = np.minimum(np.floor(self.cfg.max_layer_ratio * self.filter_counts + 1e-9),
                          self.filter_counts - 1).astype(np.int64)
        if self.cfg.psap_target == "filters":
            best = caps.sum() / self.filter_counts.sum()
        else:
            best = removed_macs(records, self.layers, caps) / sum(r["macs"] for r in records)
        if self.cfg.psap_ratio > best + 1e-9:
            raise ConfigError(f"config key 'psap_ratio': got {self.cfg.psap_ratio}, but at most "
                              f"{best:.4f} of the {self.cfg.psap_target} can be pruned with "
                              f"max_layer_ratio={self.cfg.max_layer_ratio}")

    def _layer_counts(self, sparsities, target, records, available, minimum):
        if self.cfg.psap_target == "filters":
            return adaptive_layer_ratios(sparsities, self.filter_counts, target,
                                         self.cfg.max_layer_ratio, available=available,
                                         minimum=minimum)
        return flops_layer_counts(sparsities, self.filter_counts, target,
                                  self.cfg.max_layer_ratio, records, self.layers,
                                  available=available, minimum=minimum)

    def _normalized_energy(self, energy, ctx):
        """{conv name: BN-normalised energy}, for energies of one step taken right after a pruning
        step: batch variance 0 for the filters zeroed at that step, moving variance for the rest."""
        names = [n for n in self.conv_names if n in energy]
        layer_of = {n: (i, layer) for i, (n, layer) in enumerate(zip(self.conv_names, self.layers))}
        stats = ctx.get_weights([layer_of[n][1]["bn"][field] for n in names
                                 for field in ("gamma", "moving_variance")])
        result = {}
        for name in names:
            i, layer = layer_of[name]
            variance = np.where(self.zeroed[self._slice(i)], 0.0,
                                stats[layer["bn"]["moving_variance"]])
            result[name] = bn_normalized_energy(np.asarray(energy[name]).reshape(-1),
                                                stats[layer["bn"]["gamma"]], variance,
                                                layer["bn_eps"])
        return result

    def _compared_energy(self, energy):
        """{conv name: per-filter energy compared for protection} (``protect_energy``), or None
        when the normalised energies were not measured (logged)."""
        if self.cfg.protect_energy == "raw":
            return {n: np.asarray(energy[n], dtype=np.float64).reshape(-1)
                    for n in self.conv_names if n in energy}
        if np.isnan(self.measured).any():
            self.logger.warning("psap: no gradient energy was measured on the first step after the "
                                "last pruning step (resumed from an older checkpoint?); no new "
                                "protection at this step")
            return None
        return {n: self.measured[self._slice(i)].copy() for i, n in enumerate(self.conv_names)}

    def _log_energy(self, raw):
        """One line: zeroed filters' energy relative to the median of their layer's kept ones
        (and, for normalised energies, how many the raw interval energies would protect)."""
        ratios, raw_hits = [], 0
        for name, item in self.last_energy.items():
            zeroed = item["zeroed"]
            kept = item["energy"][~zeroed]
            if kept.size and zeroed.any():
                ratios.append(item["energy"][zeroed] / max(float(np.median(kept)), 1e-30))
            if name in raw and self.cfg.protect_energy != "raw":
                e = np.asarray(raw[name], dtype=np.float64).reshape(-1)
                raw_hits += int(protected_filters(e[zeroed], e[~zeroed], self.cfg.protect_tau).sum())
        if not ratios:
            return
        ratios = np.concatenate(ratios)
        q = np.quantile(ratios, [0.1, 0.5, 0.9])
        compare = "" if self.cfg.protect_energy == "raw" else \
            f" (raw interval energies: {raw_hits})"
        self.logger.info("psap protection (%s energy): zeroed/median(kept) over %d zeroed filters:"
                         " exactly 0 %d, p10 %.3g, p50 %.3g, p90 %.3g, max %.3g; > tau %d%s",
                         self.cfg.protect_energy, ratios.size, int(np.sum(ratios == 0)), q[0],
                         q[1], q[2], float(ratios.max()),
                         int(np.sum(ratios > self.cfg.protect_tau)), compare)

    def _slice(self, layer_index):
        return slice(self.offsets[layer_index], self.offsets[layer_index + 1])

    def _prune_step(self, epoch, ctx, final):
        cfg = self.cfg
        target = asfp_target(epoch + 1, cfg.psap_ratio, self.end_epoch, cfg.psap_curve_k)
        weights = ctx.get_weights(self.conv_names)
        energy = ctx.read_energy(reset=True) or {}

        # protection: zeroed filters of the previous step the loss keeps pulling back
        self.protect = np.maximum(self.protect - 1, 0)  # one more step served
        newly_protected = 0
        self.last_energy = {}
        if cfg.psap_protect and self.steps_done > 0:
            compared = self._compared_energy(energy) or {}
            for i, name in enumerate(self.conv_names):
                if name not in compared:
                    continue
                part = self._slice(i)
                zeroed = self.zeroed[part]
                e = compared[name]
                self.last_energy[name] = {"energy": e, "zeroed": zeroed.copy()}
                hits = protected_filters(e[zeroed], e[~zeroed], cfg.protect_tau)
                index = np.flatnonzero(zeroed)[hits]
                newly_protected += int(np.sum(self.protect[part][index] == 0))
                self.protect[part][index] = cfg.protect_steps
            self._log_energy(energy)
        self.measured[:] = np.nan

        if cfg.psap_adaptive:
            sparsities = [weight_sparsity_ratio(weights[n], cfg.psap_eps,
                                                exclude=self.zeroed[self._slice(i)])
                          for i, n in enumerate(self.conv_names)]
        else:
            sparsities = np.ones(len(self.conv_names))
        # Filters that are exactly zero now (typically zeroed ones whose BN shift is <= 0: their
        # ReLU is dead, they get no gradient and cannot regrow) are pruned in any case: they
        # count toward the target and are selected first, so the compact network ends exactly
        # at the target instead of silently dropping them on top of it.
        dead = np.concatenate([zero_filters(weights[n]) for n in self.conv_names])
        records = self._geometry(getattr(ctx, "input_shape", None))

        def plan():
            candidates = ~(self.protect > 0)
            available = [int(np.sum(candidates[self._slice(i)])) for i in range(len(self.layers))]
            minimum = [int(np.sum((dead & candidates)[self._slice(i)]))
                       for i in range(len(self.layers))]
            return self._layer_counts(sparsities, target, records, available, minimum)

        try:
            counts = plan()
        except ValueError:
            # the protected filters leave too few candidates: the global target wins
            self.logger.warning("psap: protection leaves too few candidates for target %.4f; "
                                "protection lifted for this step", target)
            self.protect[:] = 0
            counts = plan()
        protected = self.protect > 0

        masks, new_zeroed = {}, np.zeros_like(self.zeroed)
        for i, name in enumerate(self.conv_names):
            part = self._slice(i)
            scores = filter_scores(weights[name], cfg.filter_score)
            candidates = np.flatnonzero(~protected[part])
            # exactly-zero filters first, then the lowest scores
            order = np.lexsort((scores[candidates], ~dead[part][candidates]))
            chosen = candidates[order[:counts[i]]]
            new_zeroed[part][chosen] = True
            mask = np.ones(self.filter_counts[i], dtype=np.float32)
            mask[chosen] = 0.0
            masks[name] = mask.reshape(-1, 1, 1, 1)
            if final:
                # zero BN gamma and beta too, so the channel outputs exactly 0 (not the constant
                # relu(BN(0))) and the compact network equals the masked one. Only at the end:
                # with gamma = 0 the filter would get no gradient and could never regrow.
                masks[self.layers[i]["bn"]["gamma"]] = mask
                masks[self.layers[i]["bn"]["beta"]] = mask
        ctx.apply_masks(masks)

        regrew = int(np.sum(self.zeroed & ~new_zeroed))
        self.zeroed = new_zeroed
        self.steps_done += 1
        self.current_target = target
        self.last_counts = counts
        self.final_done = final
        ratios = counts / self.filter_counts
        removed = removed_macs(records, self.layers, counts) / sum(r["macs"] for r in records)
        self.logger.info(
            "psap step %d (epoch %d%s): target %s %.4f, filters zeroed %d/%d (%.2f%%), MACs -%.2f%%,"
            " protected %d (new %d), regrew %d, layer ratios %s", self.steps_done, epoch + 1,
            ", final" if final else "", cfg.psap_target, target, int(counts.sum()),
            int(self.filter_counts.sum()), 100 * counts.sum() / self.filter_counts.sum(),
            100 * removed, int(protected.sum()), newly_protected, regrew, _compact_ratios(ratios))
