"""RPG: gradual global-magnitude pruning with RigL drop-and-grow, regrowth scored by the dense
gradient of task_loss + lamb * rank_loss (the adversarial rank loss of rank_loss.py).

Reference behaviour (huawei-noah/Efficient-Computing, Pruning/RPG) and deviations: docs/RPG.md;
every ``delta`` iterations until T_end the iteration's batch is used for a dense gradient of the
full loss, the masks are recomputed, and the optimizer step of that iteration is skipped
(``rpg_apply_update_step: true`` applies it instead, a documented deviation). Each update also
records a ``layer_ranks`` event: every rank-loss layer's k (the reference's layerwise_ranks.csv)
and, with ``record_layer_ranks``, its numerical rank. The rank loss covers the conv weights (the
reference); ``rank_loss_layers: all`` adds the Dense (2-D) ones, for Dense-heavy networks.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

from src.pruning.masks.drop_grow import DropAndGrowPruner
from src.pruning.masks.rpg.rank_loss import layer_rank_terms, mean_over_usable_layers, rank_loss_from_targets
from src.pruning.masks.rpg.rank_targets import rank_targets_numpy
from src.recipe_keys import Key
from src.report import numerical_rank


class RankLossTerm(nn.Cell):
    """lamb * rank_loss over the rank-loss layers (conv weights; with ``rank_loss_layers: all``
    Dense ones too): the extra term of the regrowth gradient.

    ``svd: host`` (default, as docs/RPG.md describes, for portability): the pruner computes the
    constant low-rank targets A_k on the host (k from a float64 Gram eigendecomposition, see
    rank_targets.rank_targets_numpy) before each mask update and stores
    them in ``targets``; the graph only runs the cheap differentiable part. ``svd: graph``: the
    SVD runs inside the graph (``ops.svd``, float32; CPU/GPU back ends). Both give the value of
    ``rank_loss`` (mean over the layers whose SVD succeeded) and record which layers failed.

    ``sparsity_thres`` (the reference's knob): only layers whose share of exact zeros is at least
    this are in the loss (``cover``, decided on the host for both paths); 0 covers every layer.
    ``ranks`` holds each layer's k of the last targets (None: not in the loss).
    """

    def __init__(self, layer_params, lamb, partial_k, svd="host", sparsity_thres=0.0):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(layer_params)
        self.lamb = lamb
        self.partial_k = partial_k
        self.in_graph = svd == "graph"
        count = len(layer_params)
        self.ok_flags = Parameter(Tensor(np.ones(count, np.float32)), name="rpg_rank.ok",
                                  requires_grad=False)
        self.targets = ParameterTuple([
            Parameter(Tensor(np.zeros((p.shape[0], int(np.prod(p.shape[1:]))), np.float32)),
                      name=f"rpg_rank.target.{p.name}", requires_grad=False)
            for p in layer_params]) if not self.in_graph else ()
        self.sparsity_thres = float(sparsity_thres)
        self.thresholded = self.sparsity_thres > 0.0
        self.covered = [True] * count
        self.ranks = [None] * count
        if self.in_graph:
            self.layer_k = Parameter(Tensor(np.zeros(count, np.float32)), name="rpg_rank.k",
                                     requires_grad=False)
            if self.thresholded:
                self.covered_flags = Parameter(Tensor(np.ones(count, np.float32)),
                                               name="rpg_rank.covered", requires_grad=False)

    def cover(self, weights):
        """Decide which layers the loss covers: share of exact zeros >= sparsity_thres, measured
        on ``weights`` (host arrays) as the reference measures it on the current weights."""
        if not self.thresholded:
            return
        self.covered = [1.0 - np.count_nonzero(w) / w.size >= self.sparsity_thres for w in weights]
        if self.in_graph:
            self.covered_flags.set_data(Tensor(np.asarray(self.covered, np.float32)))

    def set_host_targets(self, weights, rank=0, group_size=1, sum_across_workers=None):
        """Host targets (float64 k rule) of every covered layer weight; returns the names of the
        covered layers that failed.

        With several data-parallel workers each decomposes its share of the layers and two
        calls of ``sum_across_workers`` (a collective float32 sum) gather them (a collective
        then: every worker must call this)."""
        chosen = [i for i, covered in enumerate(self.covered) if covered]
        ks, ok = [0] * len(self.covered), [False] * len(self.covered)
        if chosen:  # every worker sees the same weights, so all skip the collectives together
            targets, got_k, got_ok = rank_targets_numpy([weights[i] for i in chosen], self.partial_k,
                                                        rank=rank, group_size=group_size,
                                                        sum_across_workers=sum_across_workers)
            for i, target, k, good in zip(chosen, targets, got_k, got_ok):
                self.targets[i].set_data(Tensor(target))
                ks[i], ok[i] = k, good
        self.ok_flags.set_data(Tensor(np.asarray(ok, np.float32)))
        self.ranks = [k if good else None for k, good in zip(ks, ok)]
        return [p.name for p, covered, good in zip(self.params, self.covered, ok) if covered and not good]

    def read_graph_ranks(self):
        """After a call of the graph path: the k it chose for each layer."""
        if self.in_graph:
            ks, ok = self.layer_k.asnumpy(), self.ok_flags.asnumpy()
            self.ranks = [int(k) if good > 0.5 else None for k, good in zip(ks, ok)]

    def construct(self):
        if self.in_graph:
            losses, oks, ks = layer_rank_terms(self.params, self.partial_k)
            ok = ops.stack(oks).astype(ms.float32)
            if self.thresholded:
                ok = ok * self.covered_flags
            ops.assign(self.ok_flags, ok)
            ops.assign(self.layer_k, ops.stack(ks).astype(ms.float32))
            return self.lamb * mean_over_usable_layers(ops.stack(losses), ok)
        return self.lamb * rank_loss_from_targets(self.params, self.targets, self.ok_flags)


class RPGPruner(DropAndGrowPruner):
    name = "rpg"
    update_label = "an RPG mask update"
    keys = {
        "lamb": Key(float, 0.5, 0.0, 1e4, help_text="weight of the rank loss in the regrowth gradient"),
        "partial_k": Key(float, 0.2, 0.0, 1.0, help_text="energy left out of the low-rank target"),
        "rank_svd": Key(str, "host", choices=["host", "graph"],
                        help_text="where the rank loss's low-rank targets are computed: host NumPy (portable) or "
                                  "in the graph (ops.svd, float32)"),
        "rpg_apply_update_step": Key(bool, False, help_text="also take the optimizer step on mask-update "
                                                            "iterations (reference: skipped)"),
        "sparsity_thres": Key(float, 0.0, 0.0, 1.0, high_open=True,
                              help_text="rank loss only on layers whose share of zero weights is at "
                                        "least this (reference knob; 0 = every layer, its default)"),
        "record_layer_ranks": Key(bool, False,
                                  help_text="add each rank-loss layer's numerical rank (one SVD per layer "
                                            "per mask update) to the layer_ranks event; k is always recorded"),
        "rank_loss_layers": Key(str, "conv", choices=["conv", "all"],
                                help_text="weights in the rank loss: conv (4-D, the reference) or all pruned "
                                          "weights, Dense (2-D) ones too"),
    }

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.schedule = self.exponential_schedule()
        params = {p.name: p for p in net.trainable_params()}
        self.rank_names = [n for n in self.names
                           if cfg.rank_loss_layers == "all" or len(params[n].shape) == 4]
        self.rank_term = None
        if cfg.lamb > 0 and self.rank_names:
            self.rank_term = RankLossTerm([params[n] for n in self.rank_names], cfg.lamb,
                                          cfg.partial_k, cfg.rank_svd, cfg.sparsity_thres)
        logger.info(f"rpg: {len(self.names)} masked weights, {len(self.update_steps)} mask updates "
                    f"(every {cfg.delta} iterations, first {self.update_steps[0]}, last "
                    f"{self.update_steps[-1]}), final density reached at update "
                    f"{self.schedule.total_updates}, lamb {cfg.lamb}, partial_k {cfg.partial_k}, "
                    f"rank loss on {len(self.rank_names)} {cfg.rank_loss_layers} layers, {self.allocation()}"
                    + (f", sparsity_thres {cfg.sparsity_thres}" if cfg.sparsity_thres > 0 else ""))

    def _set_rank_targets(self, weights, ctx):
        if self.rank_term is None:
            return
        layers = [weights[n] for n in self.rank_names]
        self.rank_term.cover(layers)
        if not self.rank_term.in_graph:
            self.rank_term.set_host_targets(layers, ctx.rank, ctx.group_size, ctx.sum_across_workers)

    def grow_signal(self, step, batch, ctx, weights):
        """|dense gradient of task + lamb * rank loss| on this iteration's batch; the iteration
        is consumed (its optimizer step skipped, as the reference)."""
        self._set_rank_targets(weights, ctx)
        grads, task, extra = self.dense_gradient(step, batch, ctx, self.rank_term)
        self.rank_value = float(extra.asnumpy()) / self.cfg.lamb if self.rank_term is not None else None
        if self.rank_term is not None:
            self.rank_term.read_graph_ranks()
            failed = [n for n, covered, ok in zip(self.rank_names, self.rank_term.covered,
                                                  self.rank_term.ok_flags.asnumpy()) if covered and ok < 0.5]
            if failed:
                self.logger.warning(f"rank loss: SVD failed or weight is all zero for {len(failed)} "
                                    f"layer(s), they contribute 0: {', '.join(failed[:5])}")
        return grads, task

    def after_update(self, step, batch, ctx, weights, loss, event):
        event.update(task_loss=loss, rank_loss=self.rank_value)
        loss = super().after_update(step, batch, ctx, weights, loss, event)
        self._record_layer_ranks(ctx, event, weights)
        if self.cfg.rpg_apply_update_step:
            # the step's rank loss must see the pruned weights, not the pre-update ones
            self._set_rank_targets(weights, ctx)
            loss = float(ctx.step_with_extra_loss("rpg", self.rank_term)(*batch).asnumpy())
        return loss

    def _record_layer_ranks(self, ctx, event, weights):
        """One ``layer_ranks`` event per update: each rank-loss layer's k (chosen on the weights the update
        started from, as the reference's layerwise_ranks.csv; None when not in the rank loss) and,
        with ``record_layer_ranks``, the numerical rank of its weight after the update."""
        if self.rank_term is None and not self.cfg.record_layer_ranks:
            return
        ks = self.rank_term.ranks if self.rank_term is not None else [None] * len(self.rank_names)
        layers = []
        for name, k in zip(self.rank_names, ks):
            row = {"name": name, "k": k}
            if self.cfg.record_layer_ranks:
                matrix = weights[name].astype(np.float64)
                row["rank"] = numerical_rank(matrix) if np.any(matrix) else 0
            layers.append(row)
        ctx.record({"event": "layer_ranks", "method": self.name, "update": event["update"],
                    "step": event["step"], "before_iteration": True, "layers": layers})

    def update_details(self, event):
        rank = event["rank_loss"]
        return super().update_details(event) + f" rank loss {'off' if rank is None else f'{rank:.6f}'}"
