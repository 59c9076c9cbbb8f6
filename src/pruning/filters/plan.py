"""How many filters each layer loses at a PSAP pruning step, and whether the recipe's target can
be met at all: the allocation (``allocation``) over each layer's bounds (``max_layer_ratio``,
filters that must go, protected filters), on filter counts or on the network's exact MACs, with
kept widths rounded to ``psap_width_multiple`` (``widths``)."""
import numpy as np

from src.errors import ConfigError
from src.pruning.filters.allocation import (adaptive_layer_ratios, count_bounds, flops_layer_counts,
                                            removed_macs)
from src.pruning.filters.compact import TARGET_TOLERANCE
from src.pruning.filters.widths import allowed_pruned_counts, round_pruned_counts


class LayerPlan:
    """Per-layer pruned counts for ``layout`` (``FilterLayout``); ``stream`` is the run's
    ``StreamPruning`` or None."""

    def __init__(self, cfg, layout, stream, logger):
        self.cfg, self.layout, self.stream, self.logger = cfg, layout, stream, logger

    def check_feasible(self, records):
        """ConfigError when ``psap_ratio`` cannot be met with ``max_layer_ratio`` (and kept widths on
        multiples of ``psap_width_multiple``) on the network of ``records`` (``layer_records``)."""
        cfg, counts = self.cfg, self.layout.counts
        if self.stream:   # the streams' cut is fixed by their ratios: it may not pass the target
            streams_alone = self._prunable_fraction(records, np.zeros_like(counts))
            if streams_alone > cfg.psap_ratio + TARGET_TOLERANCE:
                raise ConfigError(f"config key 'psap_stream_ratios': {list(cfg.psap_stream_ratios)} alone "
                                  f"remove {streams_alone:.4f} of the MACs, more than psap_ratio "
                                  f"{cfg.psap_ratio}: lower the stream ratios or raise psap_ratio")
        caps = np.minimum(np.floor(cfg.max_layer_ratio * counts + 1e-9), counts - 1).astype(np.int64)
        best = self._prunable_fraction(records, caps)
        if cfg.psap_ratio > best + 1e-9:
            raise ConfigError(f"config key 'psap_ratio': got {cfg.psap_ratio}, but at most "
                              f"{best:.4f} of the {cfg.psap_target} can be pruned with "
                              f"max_layer_ratio={cfg.max_layer_ratio}")
        multiple = cfg.psap_width_multiple
        if multiple > 1:  # the largest prune of each layer that leaves a kept width on a multiple
            rounded = [max(allowed_pruned_counts(int(n), multiple, 0, int(cap)) or [cap])
                       for n, cap in zip(counts, caps)]
            best = self._prunable_fraction(records, np.array(rounded, dtype=np.int64))
            if cfg.psap_ratio > best + TARGET_TOLERANCE:
                raise ConfigError(f"config key 'psap_width_multiple': with kept widths on multiples "
                                  f"of {multiple} at most {best:.4f} of the {cfg.psap_target} "
                                  f"can be pruned, psap_ratio is {cfg.psap_ratio}")

    def _prunable_fraction(self, records, pruned):
        if self.cfg.psap_target == "filters":
            return pruned.sum() / self.layout.counts.sum()
        # the streams at their final width, then the inner filters
        cut = self.stream.records(records, self.stream.final_counts) if self.stream else records
        return self.removed_fraction(records, cut, pruned)

    def removed_fraction(self, records, inner_records, counts):
        """Fraction of the dense MACs (``records``) removed by the stream cut (``inner_records``:
        the stream-cut network, ``records`` itself without streams) and ``counts`` inner filters."""
        dense = sum(r["macs"] for r in records)
        return (dense - sum(r["macs"] for r in inner_records)
                + removed_macs(inner_records, self.layout.layers, counts)) / dense

    def counts(self, sparsities, target, records, dead, protection):
        """Per-layer counts; ``protection``'s protected filters are not candidates unless they
        leave too few (then protection is lifted for this step); ``dead`` filters count first."""
        part = self.layout.part

        def plan():
            candidates = ~protection.protected
            available = [int(np.sum(candidates[part(i)])) for i in range(len(self.layout.layers))]
            minimum = [int(np.sum((dead & candidates)[part(i)])) for i in range(len(self.layout.layers))]
            return self._layer_counts(sparsities, target, records, available, minimum, protection)

        try:
            return plan()
        except ValueError:
            # the protected filters leave too few candidates (or, with width rounding, no
            # allowed widths that meet the target): the global target wins
            self.logger.warning("psap: protection leaves too few candidates for target %.4f; "
                                "protection lifted for this step", target)
            protection.lift()
            return plan()

    def _layer_counts(self, sparsities, target, records, available, minimum, protection):
        cfg, layout = self.cfg, self.layout
        if cfg.psap_target == "filters":
            counts = adaptive_layer_ratios(sparsities, layout.counts, target, cfg.max_layer_ratio,
                                           available=available, minimum=minimum)
        else:
            counts = flops_layer_counts(sparsities, layout.counts, target, cfg.max_layer_ratio,
                                        records, layout.layers, available=available,
                                        minimum=minimum)
        if cfg.psap_width_multiple > 1:
            counts = self._round_widths(counts, target, records, available, minimum, protection)
        return counts

    def _round_widths(self, counts, target, records, available, minimum, protection):
        """``psap_width_multiple``: kept widths on multiples of N, the target still met."""
        cfg, layout = self.cfg, self.layout
        _, lower, caps = count_bounds(layout.counts, cfg.max_layer_ratio, available, minimum)
        if cfg.psap_target == "filters":
            total = float(layout.counts.sum())
            removed = np.sum
        else:
            total = float(sum(r["macs"] for r in records))
            removed = lambda c: removed_macs(records, layout.layers, c)  # noqa: E731
        # layers leave the two widths around their allocation only beyond half the tolerance
        rounded, unrounded = round_pruned_counts(counts, layout.counts, cfg.psap_width_multiple,
                                                 lower, caps, removed, target * total,
                                                 tolerance=0.5 * TARGET_TOLERANCE * total)
        if unrounded:
            self.logger.info("psap: %d layer(s) have no kept width on a multiple of %d within "
                             "their bounds; left unrounded", len(unrounded), cfg.psap_width_multiple)
        miss = abs(float(removed(rounded)) / total - target)
        if miss > TARGET_TOLERANCE:
            if np.any(protection.protected):
                # protected filters narrow the allowed widths: let counts() lift protection
                raise ValueError(f"rounded widths miss the target by {miss:.4f}")
            self.logger.warning("psap: no kept widths on multiples of %d meet target %.4f (miss "
                                "%.4f)", cfg.psap_width_multiple, target, miss)
        return rounded
