"""PSAP: protective self-adaptive soft filter pruning of ResNets (the pruner and its config keys).
Its parts with state are objects with their own ``state_dict``: ``Protection``, ``TaylorImportance``
and, with ``psap_stream_ratios``, ``StreamPruning``; the pruner owns which filters are zeroed.

What follows the PSAP abstract (arXiv 2303.11881; no full text or code is public):
iterative prune-train filter pruning; each layer's pruning ratio set by its own weight sparsity
before each pruning step; a protective mechanism that watches gradients so that important filters
are not pruned and pruned ones can be reconstructed.

Design choices of this project (where the abstract is silent), see docs/PSAP.md:
- soft pruning as in SFP: pruned filters are zeroed (weights and momentum) at each pruning step but
  keep receiving gradients and may regrow; they are removed physically only at the end;
- global target on an ASFP-shaped curve reaching ``psap_ratio`` at ``psap_end_epoch``, as a
  fraction of prunable filters or of the dense network's MACs (``allocation``, ``plan``);
- layer ratio proportional to the layer's weight sparsity (measured over the filters it kept at the
  previous step, so that the filters it zeroed itself do not feed back into its own ratio),
  capped by ``max_layer_ratio`` and rescaled so the global target is met exactly; with
  ``psap_width_multiple`` N > 1 the kept widths are then moved to multiples of N with the target
  still met (``widths``);
- filter score (``scores``): L2 norm or FPGM distance of the filter, or a BN-aware score
  (bn_l2, bn_energy, taylor_bn) that judges the channel through its BatchNorm; a BN-aware score
  also measures the layer sparsity on the BN-folded weights;
- protection from gradient energies sum(grad^2) per filter (``protection``): zeroed filters
  whose energy exceeds ``protect_tau`` times the median energy of the layer's kept filters are
  excluded from the candidates for ``protect_steps`` steps, then compete on their score again;
- ``protect_energy: normalized`` (default): the energies are taken on the first training step after
  a pruning step, when the zeroed filters are exactly zero, and compared after dividing out each
  filter's BatchNorm scale (see ``bn_normalized_energy`` for why both are needed: the raw energy of
  a zeroed filter is set by its BN's 1/sqrt(eps) factor, not by what the filter is worth);
  ``raw``: the literal design, sum(grad^2) accumulated over the whole interval, compared as is;
- only inner convs of residual blocks are pruned (``surgery``); at the last pruning
  step the BN gamma and beta of the pruned filters are zeroed too, so the pruned channels output
  exactly 0 and the compact network equals the masked one (see ``_select``); the BatchNorm
  statistics are then re-estimated on ``psap_bn_recalibration`` training batches, because the
  constant those channels gave during training is gone (``Pruner.reestimate_bn``);
- ``psap_stream_ratios`` (off by default; not the paper's design): the residual streams lose
  channels too, for latency that follows FLOPs (``streams``).
"""
import numpy as np

from src.errors import ConfigError
from src.models.flops import layer_records
from src.pruning.core.base import Pruner
from src.pruning.filters.allocation import asfp_target, weight_sparsity_ratio
from src.pruning.filters.compact import finish_compact
from src.pruning.filters.energy import GradientEnergy
from src.pruning.filters.layout import FilterLayout
from src.pruning.filters.plan import LayerPlan
from src.pruning.filters.protection import Protection
from src.pruning.filters.scores import BN_SCORES, SCORES, filter_scores, folded_weight
from src.pruning.filters.streams import StreamPruning, check_stream_recipe
from src.pruning.filters.surgery import zero_filters
from src.pruning.filters.taylor import TaylorImportance
from src.recipe_keys import Key


def _compact_ratios(ratios):
    return "[" + " ".join(f"{r:.2f}" for r in ratios) + "]"


class PSAPPruner(Pruner):
    """Soft filter pruning with sparsity-adaptive layer ratios and gradient-energy protection."""

    name = "psap"
    # the input shape counts MACs (the training batches that re-estimate the BatchNorm statistics
    # after the final step reach every method as ``self.training_batches``)
    needs = ("input_shape",)
    keys = {
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
        "filter_score": Key(str, "l2", choices=list(SCORES),
                            help_text="l2, fpgm: the conv filter alone; bn_l2, bn_energy, taylor_bn: "
                                      "the channel seen through its BatchNorm"),
        "psap_taylor_batches": Key(int, 8, 1, None,
                                   help_text="taylor_bn: batches before each pruning step on which "
                                             "the Taylor importance is accumulated (one extra "
                                             "forward-backward each)"),
        "psap_width_multiple": Key(int, 1, 1, None,
                                   help_text="round every pruned layer's kept filters to a multiple "
                                             "of this (1 = off)"),
        "protect_tau": Key(float, 1.0, 0.0, None, low_open=True,
                           help_text="protect a zeroed filter whose gradient energy exceeds tau x the "
                                     "median of the layer's kept filters"),
        "protect_steps": Key(int, 2, 1, None, help_text="pruning steps a protected filter is spared"),
        "protect_energy": Key(str, "normalized", choices=["normalized", "raw"],
                              help_text="normalized: gradient energy of the first step after a pruning "
                                        "step with the BN scale divided out (default); raw: sum(grad^2) "
                                        "over the whole interval, as is"),
        "psap_stream_ratios": Key(list, [],
                                  help_text="fraction of each stage's residual-stream channels to "
                                            "prune by the end, e.g. [0.5, 0, 0.25] (CIFAR-style "
                                            "ResNets, psap_target flops); [] = inner convs only"),
        "psap_bn_recalibration": Key(int, 50, 0, None,
                                     help_text="training batches on which the BatchNorm statistics "
                                               "are re-estimated after the final pruning step "
                                               "(forward passes only); 0 = off"),
        "psap_adaptive": Key(bool, True, help_text="false = uniform layer ratios (SFP baseline)"),
        "psap_protect": Key(bool, True, help_text="false = no protection (SFP baseline)"),
    }

    @classmethod
    def check_recipe(cls, cfg):
        check_stream_recipe(cfg)

    def __init__(self, cfg, net, steps_per_epoch, logger, input_shape=None):
        if input_shape is None:
            raise ConfigError("method psap needs input_shape (one input's shape with batch 1) to "
                              "count MACs")
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.stream = StreamPruning(cfg, net) if cfg.psap_stream_ratios else None
        if self.stream:
            self._warn_stream_rounding()
        self.layout = FilterLayout(net)
        self.end_epoch = cfg.psap_end_epoch or cfg.epoch_size
        if self.end_epoch > cfg.epoch_size:
            # a shortened run (e.g. --epoch_size 2 on a 6-epoch recipe) reaches the ratio at its end
            logger.info(f"psap: psap_end_epoch {cfg.psap_end_epoch} is past the last epoch; the "
                        f"target is reached at epoch {cfg.epoch_size}")
            self.end_epoch = cfg.epoch_size
        self.plan = LayerPlan(cfg, self.layout, self.stream, logger)
        self.records = layer_records(net, self.input_shape)   # the dense network's MACs per layer
        self.plan.check_feasible(self.records)
        self.protection = Protection(cfg, self.layout, steps_per_epoch, logger)
        self.taylor = TaylorImportance(cfg, self.layout, steps_per_epoch, self._prunes_after)
        self.steps_done = 0
        self.zeroed = np.zeros(self.layout.total, dtype=bool)  # filters zeroed at the last step
        self.current_target = 0.0
        self.final_done = False
        self.last_counts = np.zeros(len(self.layout.layers), dtype=np.int64)
        self.energy_piece = None

    def _warn_stream_rounding(self):
        final_streams = self.stream.kept_widths(self.stream.final_counts)
        if final_streams != self.stream.requested:
            self.logger.warning("psap: psap_stream_ratios %s keep stream widths %s, not the %s the "
                                "ratios alone give (kept widths on multiples of psap_width_multiple "
                                "%d, at least one channel)", list(self.cfg.psap_stream_ratios),
                                "/".join(map(str, final_streams)),
                                "/".join(map(str, self.stream.requested)),
                                self.cfg.psap_width_multiple)

    # -- plug-in contract --------------------------------------------------------------
    @property
    def energy_names(self):
        return list(self.layout.conv_names)

    def graph_pieces(self, optimizer):
        self.energy_piece = GradientEnergy(optimizer, self.energy_names)
        return [self.energy_piece]

    def read_energy(self, reset):
        return self.energy_piece.read(reset) if self.energy_piece is not None else {}

    def before_step(self, step, batch, ctx):
        """taylor_bn: accumulate the Taylor importance on the last batches before a pruning step
        (an extra forward-backward; the ordinary step still runs: returns None)."""
        if self.taylor.wanted(step):
            self.taylor.accumulate(batch, ctx)
        return None

    def after_step(self, step, ctx):
        self.protection.after_step(step, self.steps_done, self.zeroed, self.read_energy, ctx)

    def on_epoch_end(self, epoch, ctx):
        if self._prunes_after(epoch):
            self._prune_step(epoch, ctx, final=epoch >= self.cfg.epoch_size - 1)

    def on_train_end(self, ctx):
        if not self.final_done:
            self.logger.warning("psap: the last epoch had no pruning step; pruning now")
            self._prune_step(self.cfg.epoch_size - 1, ctx, final=True)
        return finish_compact(self, ctx)

    def state_dict(self):
        return {"psap_steps_done": np.int64(self.steps_done),
                "psap_zeroed": self.zeroed.astype(np.int32),
                "psap_current_target": np.float64(self.current_target),
                "psap_final_done": np.int64(int(self.final_done)),
                **self.protection.state_dict(), **self.taylor.state_dict(),
                **(self.stream.state_dict() if self.stream else {})}

    def load_state_dict(self, state):
        if not state:
            return
        zeroed = np.asarray(state["psap_zeroed"]).astype(bool).reshape(-1)
        if zeroed.size != self.zeroed.size:
            raise ValueError(f"psap state holds {zeroed.size} filters, the network has "
                             f"{self.zeroed.size} prunable filters (another network?)")
        self.zeroed = zeroed
        self.steps_done = int(np.asarray(state["psap_steps_done"]))
        self.current_target = float(np.asarray(state["psap_current_target"]))
        self.final_done = bool(int(np.asarray(state["psap_final_done"])))
        self.protection.load_state_dict(state)
        self.taylor.load_state_dict(state)
        if self.stream:
            self.stream.load_state_dict(state)
        elif state.get("psap_stream_zeroed") is not None:
            raise ValueError("the checkpoint was trained with psap_stream_ratios, the config has none")

    def report(self):
        return {"psap_target": round(self.current_target, 4),
                "filters_zeroed": round(float(self.zeroed.mean()), 4) if self.zeroed.size else 0.0}

    def regrowth_summary(self):
        """{regrown: filters that regrew at some step, survived: those kept at the last step}."""
        return self.protection.regrowth_summary(self.zeroed)

    # -- internals ---------------------------------------------------------------------
    def _prunes_after(self, epoch):
        last = epoch >= self.cfg.epoch_size - 1
        return last or (epoch + 1) % self.cfg.psap_interval_epochs == 0

    def _bn_stats(self, ctx):
        """Per layer {gamma, beta, moving_variance, eps} (only for the BN-aware scores)."""
        layers = self.layout.layers
        if self.cfg.filter_score not in BN_SCORES:
            return [None] * len(layers)
        fields = ("gamma", "beta", "moving_variance")
        arrays = ctx.get_weights([layer["bn"][f] for layer in layers for f in fields])
        return [dict({f: arrays[layer["bn"][f]] for f in fields}, eps=layer["bn_eps"])
                for layer in layers]

    def _sparsities(self, weights, bn):
        """Layer weight sparsities (over each layer's kept filters), of the BN-folded weights
        with a BN-aware score; all ones without adaptation (uniform ratios)."""
        cfg, layout = self.cfg, self.layout
        if not cfg.psap_adaptive:
            return np.ones(len(layout.conv_names))
        return [weight_sparsity_ratio(weights[n] if bn[i] is None else folded_weight(weights[n], bn[i]),
                                      cfg.psap_eps, exclude=self.zeroed[layout.part(i)])
                for i, n in enumerate(layout.conv_names)]

    def _scores(self, i, weight, bn):
        """Filter scores of layer ``i`` (``filter_score``; taylor_bn: the accumulated importance)."""
        if self.cfg.filter_score != "taylor_bn":
            return filter_scores(weight, self.cfg.filter_score, bn=bn)
        if self.taylor.batches == 0:
            self.logger.warning("psap: no Taylor importance was accumulated before this "
                                "step (resumed mid-interval?); using bn_l2 for it")
            return filter_scores(weight, "bn_l2", bn=bn)
        return filter_scores(weight, "taylor_bn", bn=bn, taylor=self.taylor.mean(i))

    def _select(self, weights, bn, counts, dead, protected, final):
        """Masks zeroing, per layer, the ``counts[i]`` unprotected filters to prune: exactly-zero
        filters first, then the lowest scores. Returns (masks, zeroed flags)."""
        layout = self.layout
        masks, new_zeroed = {}, np.zeros_like(self.zeroed)
        for i, name in enumerate(layout.conv_names):
            part = layout.part(i)
            scores = self._scores(i, weights[name], bn[i])
            candidates = np.flatnonzero(~protected[part])
            order = np.lexsort((scores[candidates], ~dead[part][candidates]))
            chosen = candidates[order[:counts[i]]]
            new_zeroed[part][chosen] = True
            mask = np.ones(layout.counts[i], dtype=np.float32)
            mask[chosen] = 0.0
            masks[name] = mask.reshape(-1, 1, 1, 1)
            if final:
                # zero BN gamma and beta too, so the channel outputs exactly 0 (not the constant
                # relu(BN(0))) and the compact network equals the masked one. Only at the end:
                # with gamma = 0 the filter would get no gradient and could never regrow.
                masks[layout.layers[i]["bn"]["gamma"]] = mask
                masks[layout.layers[i]["bn"]["beta"]] = mask
        return masks, new_zeroed

    def _prune_step(self, epoch, ctx, final):
        cfg = self.cfg
        target = asfp_target(epoch + 1, cfg.psap_ratio, self.end_epoch, cfg.psap_curve_k)
        weights = ctx.get_weights(self.layout.conv_names)
        energy = self.read_energy(reset=True)
        newly_protected = self.protection.update(energy, self.zeroed, self.steps_done)
        bn = self._bn_stats(ctx)
        sparsities = self._sparsities(weights, bn)
        # Filters that are exactly zero now (typically zeroed ones whose BN shift is <= 0: their
        # ReLU is dead, they get no gradient and cannot regrow) are pruned in any case: they
        # count toward the target and are selected first, so the compact network ends exactly
        # at the target instead of silently dropping them on top of it.
        dead = np.concatenate([zero_filters(weights[n]) for n in self.layout.conv_names])
        records = self.records
        stream_masks, inner_records, inner_target = self._prune_streams(ctx, target, records, final)
        counts = self.plan.counts(sparsities, inner_target, inner_records, dead, self.protection)
        protected = self.protection.protected
        masks, new_zeroed = self._select(weights, bn, counts, dead, protected, final)
        ctx.zero_outside({**masks, **stream_masks})
        if final:
            self._recalibrate_bn(ctx)
        self.taylor.reset()

        outcome = self.protection.record_outcome(protected, self.zeroed, new_zeroed, self.steps_done)
        self.zeroed = new_zeroed
        self.steps_done += 1
        self.current_target = target
        self.last_counts = counts
        self.final_done = final
        ctx.record(self._log_step(epoch, final, target, counts, records, inner_records,
                                  newly_protected, outcome))

    def _recalibrate_bn(self, ctx):
        """The final step zeroes the pruned channels' BN gamma and beta: during training those
        channels gave the constant relu(beta), which the next layers' BatchNorm statistics
        absorbed. Without new statistics the network shifts (a ResNet-56 at a 60 % cut fell from
        about 72 % to 21 % top-1), so they are re-estimated on training batches."""
        if self.cfg.psap_bn_recalibration:
            self.reestimate_bn(ctx, self.cfg.psap_bn_recalibration, "after the final pruning step")

    def _prune_streams(self, ctx, target, records, final):
        """``psap_stream_ratios``: zero the streams' share of this step first; the inner filters
        then meet the rest of ``target`` on the network with the streams cut. Returns (masks,
        records of the stream-cut network, the inner target as a fraction of its MACs)."""
        if not self.stream:
            return {}, records, target
        arrays = ctx.get_weights(self.stream.weight_names())
        progress = target / self.cfg.psap_ratio if self.cfg.psap_ratio else 1.0
        masks, counts = self.stream.select(arrays, self.stream.counts(progress, final), final)
        cut = self.stream.records(records, counts)
        dense, rest = sum(r["macs"] for r in records), sum(r["macs"] for r in cut)
        return masks, cut, max(0.0, (target * dense - (dense - rest)) / rest)

    def _log_step(self, epoch, final, target, counts, records, inner_records, newly_protected,
                  outcome):
        """Log the pruning step; returns it as a metrics.jsonl event."""
        removed = self.plan.removed_fraction(records, inner_records, counts)
        regrowth = self.regrowth_summary()
        zeroed, total = int(counts.sum()), self.layout.total
        protected = int(np.sum(self.protection.protected))
        self.logger.info(
            "psap step %d (epoch %d%s): target %s %.4f, filters zeroed %d/%d (%.2f%%), MACs -%.2f%%,"
            " protected %d (new %d), regrew %d, layer ratios %s; protected at the previous step %d:"
            " kept %d (still protected %d, won on score %d of %d); regrown so far %d, kept now %d",
            self.steps_done, epoch + 1, ", final" if final else "", self.cfg.psap_target, target,
            zeroed, total, 100 * zeroed / total, 100 * removed, protected, newly_protected,
            outcome["regrew"], _compact_ratios(counts / self.layout.counts),
            outcome["protected_before"], outcome["kept"], outcome["still_protected"],
            outcome["won"], outcome["competed"], regrowth["regrown"], regrowth["survived"])
        streams = {}
        if self.stream:
            streams = {"stream_widths": self.stream.kept_widths()}
            self.logger.info("psap step %d: residual-stream widths %s (of %s)", self.steps_done,
                             "/".join(map(str, streams["stream_widths"])),
                             "/".join(map(str, self.stream.channels)))
        return {"event": "psap_step", **streams, "psap_step": self.steps_done, "final": final, "target": target,
                "zeroed_filters": zeroed, "filters": total, "macs_removed": removed, "protected": protected,
                "newly_protected": int(newly_protected), **{f"outcome_{k}": v for k, v in outcome.items()},
                **{f"regrowth_{k}": v for k, v in regrowth.items()}}
