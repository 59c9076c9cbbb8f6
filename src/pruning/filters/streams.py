"""PSAP option ``psap_stream_ratios``: prune the residual streams as well as the inner convs.

Not the paper's design (its abstract prunes filters; which ones is not public): an option, off by
default, because on CPUs the inner convs alone cannot make latency follow FLOPs (docs/PSAP.md).

A stream is the channels a stage's blocks add into: written by the stem (first stage), an option-B
projection and every block's conv2, read by every conv1 it feeds, the next stage's first block
and the FC (``surgery.residual_streams``). Here:
- each stage keeps ``channels - round(ratio * channels)`` stream channels at the end, rounded to
  ``psap_width_multiple``; on the way there the pruned count follows the global schedule (the
  fraction of ``psap_ratio`` reached at that step);
- a channel's score is the sum over the stream's writers of their filter scores of that channel
  (``filter_score``; ``taylor_bn``, whose importance is accumulated for inner filters only, uses
  ``bn_l2`` here): the channel goes only if no writer puts much into it;
- soft pruning as for inner filters: the writers' filters (and momentum) are zeroed at each step
  and may regrow; at the last step their BN gamma and beta too, so the channel is exactly 0;
- option A: the first block of a stage adds the previous stream, zero-padded, into its first
  channels, so a channel the previous stage keeps is never pruned in the next one (it would carry
  on non-zero); channels the previous stage pruned may stay in the next one;
- protection (gradient energies) applies to inner filters only.
The inner allocation then meets the rest of the MACs target on the network with the streams cut.
"""
import numpy as np

from src.errors import ConfigError
from src.models.resnet import checked_stage_widths, cifar_stage_widths, is_cifar_style
from src.pruning.filters.allocation import cut_records
from src.pruning.filters.scores import filter_scores
from src.pruning.filters.surgery import residual_streams

BN_FIELDS = ("gamma", "beta", "moving_variance")


def _half_up(value):
    return int(np.floor(value + 0.5))


def kept_stream_widths(channels, ratios, multiple):
    """Kept channels per stream at the end: ``c - round(r c)``, moved to the nearest multiple of
    ``multiple`` (halves up; at least one multiple, at most ``c``); never fewer than one."""
    kept = []
    for c, r in zip(channels, ratios):
        k = c - _half_up(r * c)
        if multiple > 1 and c >= multiple:
            k = min(c, max(multiple, _half_up(k / multiple) * multiple))
        kept.append(max(1, k))
    return kept


def _check_widening(ratios, kept, option_a):
    """The compact network must be buildable: ``checked_stage_widths``, as a recipe error."""
    try:
        checked_stage_widths(kept, "A" if option_a else "B")
    except ValueError:
        raise ConfigError(f"config key 'psap_stream_ratios': {list(ratios)} keeps stream widths "
                          f"{'/'.join(map(str, kept))}; with option-A shortcuts a stage cannot "
                          "keep fewer channels than the one before") from None


def check_stream_recipe(cfg):
    """Recipe constraints of ``psap_stream_ratios`` (ConfigError naming the key); those that need
    the network only when the recipe describes it (``StreamPruning`` checks the network itself)."""
    ratios = cfg.psap_stream_ratios
    if not ratios:
        return
    numbers = all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1
                  for r in ratios)
    if not numbers or len(ratios) != 3:
        raise ConfigError(f"config key 'psap_stream_ratios': got {ratios!r}, expected three "
                          "fractions in [0, 1), one per stage, e.g. [0.5, 0.0, 0.25]")
    if cfg.psap_target != "flops":
        raise ConfigError("config key 'psap_stream_ratios': needs psap_target flops (a stream "
                          "channel is not a filter of one layer)")
    if not getattr(cfg, "network_known", True):   # SparseTraining / PruningAlgorithm: a user's network
        return
    if not is_cifar_style(cfg.net):
        raise ConfigError(f"config key 'psap_stream_ratios': residual-stream pruning supports the "
                          f"CIFAR-style ResNets (resnet8/20/32/56/110), not {cfg.net}")
    kept = kept_stream_widths(cifar_stage_widths(cfg.width_multiplier), ratios,
                              cfg.psap_width_multiple)
    _check_widening(ratios, kept, cfg.shortcut in ("A", "auto"))


class StreamPruning:
    """The residual-stream part of a PSAP run: which channels are zeroed, and what that costs."""

    def __init__(self, cfg, net):
        self.streams = residual_streams(net)
        self.channels = np.array([s["channels"] for s in self.streams], dtype=np.int64)
        kept = kept_stream_widths(self.channels, cfg.psap_stream_ratios, cfg.psap_width_multiple)
        _check_widening(cfg.psap_stream_ratios, kept, any(s["carried"] for s in self.streams))
        # what the ratios alone give (c - round(r c)): differs when rounding to the width multiple
        # or the one-channel floor moved a stage
        self.requested = [c - _half_up(r * c) for c, r in zip(self.channels,
                                                              cfg.psap_stream_ratios)]
        self.final_counts = self.channels - np.array(kept, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.channels)])
        self.zeroed = np.zeros(int(self.channels.sum()), dtype=bool)
        self.score_kind = "bn_l2" if cfg.filter_score == "taylor_bn" else cfg.filter_score
        self.last_counts = np.zeros(len(self.streams), dtype=np.int64)

    def counts(self, progress, final):
        """Channels to prune per stream at a step ``progress`` (0..1) of the way to the end."""
        if final:
            return self.final_counts.copy()
        return np.round(min(max(progress, 0.0), 1.0) * self.final_counts).astype(np.int64)

    def records(self, records, counts):
        """``records`` of the network with ``counts`` channels cut from every stream."""
        out_cut, in_cut = {}, {}
        for stream, count in zip(self.streams, counts):
            for writer in stream["writers"]:
                out_cut[writer["conv"]] = int(count)
            for reader in stream["readers"]:
                in_cut[reader] = int(count)
        return cut_records(records, out_cut, in_cut)

    def weight_names(self):
        return [name for stream in self.streams for writer in stream["writers"]
                for name in [writer["conv"]] + [writer["bn"][f] for f in BN_FIELDS]]

    def scores(self, arrays, stream):
        """Per channel: the sum of the writers' filter scores."""
        total = np.zeros(stream["channels"], dtype=np.float64)
        for writer in stream["writers"]:
            bn = dict({f: arrays[writer["bn"][f]] for f in BN_FIELDS}, eps=writer["bn_eps"])
            total += filter_scores(arrays[writer["conv"]], self.score_kind, bn)
        return total

    def select(self, arrays, counts, final):
        """Masks zeroing ``counts[s]`` lowest-scoring channels of every stream (option A: never a
        channel the previous stream keeps). Returns (masks, counts actually zeroed)."""
        masks, zeroed, done = {}, np.zeros_like(self.zeroed), []
        kept_before = None
        for s, stream in enumerate(self.streams):
            scores = self.scores(arrays, stream)
            candidates = np.ones(stream["channels"], dtype=bool)
            if stream["carried"]:
                candidates[kept_before] = False
            pool = np.flatnonzero(candidates)
            chosen = pool[np.argsort(scores[pool], kind="stable")[:int(counts[s])]]
            mask = np.ones(stream["channels"], dtype=np.float32)
            mask[chosen] = 0.0
            for writer in stream["writers"]:
                masks[writer["conv"]] = mask.reshape(-1, 1, 1, 1)
                if final:
                    masks[writer["bn"]["gamma"]] = mask
                    masks[writer["bn"]["beta"]] = mask
            zeroed[self.offsets[s]:self.offsets[s + 1]][chosen] = True
            kept_before = np.flatnonzero(mask > 0)
            done.append(len(chosen))
        self.zeroed = zeroed
        self.last_counts = np.array(done, dtype=np.int64)
        return masks, self.last_counts

    def kept_widths(self, counts=None):
        counts = self.last_counts if counts is None else counts
        return [int(c) for c in self.channels - counts]

    def state_dict(self):
        return {"psap_stream_zeroed": self.zeroed.astype(np.int32),
                "psap_stream_counts": self.last_counts.copy()}

    def load_state_dict(self, state):
        if state.get("psap_stream_zeroed") is None:
            raise ValueError("the checkpoint has no residual-stream state: it was trained without "
                             "psap_stream_ratios")
        zeroed = np.asarray(state["psap_stream_zeroed"]).astype(bool).reshape(-1)
        if zeroed.size != self.zeroed.size:
            raise ValueError(f"psap state holds {zeroed.size} stream channels, the network has "
                             f"{self.zeroed.size}")
        self.zeroed = zeroed
        self.last_counts = np.asarray(state["psap_stream_counts"], np.int64).reshape(-1)
