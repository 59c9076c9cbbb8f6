"""RPG: gradual global-magnitude pruning with RigL drop-and-grow, regrowth scored by the dense
gradient of task_loss + lamb * rank_loss (the adversarial rank loss of src/pruning/rank_loss.py).

Reference behaviour (huawei-noah/Efficient-Computing, Pruning/RPG) and deviations: docs/RPG.md;
every ``delta`` iterations until T_end the iteration's batch is used for a dense gradient of the
full loss, the masks are recomputed, and the optimizer step of that iteration is skipped
(``rpg_apply_update_step: true`` applies it instead, a documented deviation).
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

from src.config import ConfigError, Key
from src.errors import TrainingError, require_finite_loss
from src.pruning.hard_mask import HardMaskPruner
from src.pruning.rank_loss import layer_rank_terms, mean_over_usable_layers, rank_loss_from_targets
from src.pruning.rank_targets import rank_targets_numpy
from src.pruning.schedules import ExponentialSchedule


class RankLossTerm(nn.Cell):
    """lamb * rank_loss over the conv weights: the extra term of the regrowth gradient.

    ``svd: host`` (default, as docs/RPG.md describes, for portability): the pruner computes the
    constant low-rank targets A_k on the host (k from a float64 Gram eigendecomposition, see
    rank_targets.rank_targets_numpy) before each mask update and stores
    them in ``targets``; the graph only runs the cheap differentiable part. ``svd: graph``: the
    SVD runs inside the graph (``ops.svd``, float32; CPU/GPU back ends). Both give the value of
    ``rank_loss`` (mean over the layers whose SVD succeeded) and record which layers failed.
    """

    def __init__(self, conv_params, lamb, partial_k, svd="host"):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(conv_params)
        self.lamb = lamb
        self.partial_k = partial_k
        self.in_graph = svd == "graph"
        count = len(conv_params)
        self.ok_flags = Parameter(Tensor(np.ones(count, np.float32)), name="rpg_rank.ok",
                                  requires_grad=False)
        self.targets = ParameterTuple([
            Parameter(Tensor(np.zeros((p.shape[0], int(np.prod(p.shape[1:]))), np.float32)),
                      name=f"rpg_rank.target.{p.name}", requires_grad=False)
            for p in conv_params]) if not self.in_graph else ()

    def set_host_targets(self, weights, rank=0, group_size=1):
        """Host targets (float64 k rule) of every conv weight; returns the names of failed layers.

        With several data-parallel workers each decomposes its share of the layers and two
        all-reduces gather them (a collective then: every worker must call this)."""
        from src.metrics import all_reduce
        targets, _, ok = rank_targets_numpy(weights, self.partial_k, rank=rank,
                                            group_size=group_size, sum_across_workers=all_reduce)
        for param, target in zip(self.targets, targets):
            param.set_data(Tensor(target))
        self.ok_flags.set_data(Tensor(np.asarray(ok, np.float32)))
        return [p.name for p, good in zip(self.params, ok) if not good]

    def construct(self):
        if self.in_graph:
            losses, oks, _ = layer_rank_terms(self.params, self.partial_k)
            ok = ops.stack(oks).astype(ms.float32)
            ops.assign(self.ok_flags, ok)
            return self.lamb * mean_over_usable_layers(ops.stack(losses), ok)
        return self.lamb * rank_loss_from_targets(self.params, self.targets, self.ok_flags)


class RPGPruner(HardMaskPruner):
    name = "rpg"
    keys = {
        "lamb": Key(float, 0.5, 0.0, 1e4, help_text="weight of the rank loss in the regrowth gradient"),
        "partial_k": Key(float, 0.2, 0.0, 1.0, help_text="energy left out of the low-rank target"),
        "delta": Key(int, 100, 1, None, help_text="iterations between mask updates"),
        "alpha": Key(float, 0.3, 0.0, 1.0, help_text="initial drop-and-grow fraction"),
        "iterative_T_end_percent": Key(float, 0.9, 0.0, 1.0, low_open=True,
                                       help_text="target density reaches its final value here"),
        "rank_svd": Key(str, "host", choices=["host", "graph"],
                        help_text="where the rank loss's low-rank targets are computed: host NumPy (portable) or "
                                  "in the graph (ops.svd, float32)"),
        "rpg_apply_update_step": Key(bool, False, help_text="also take the optimizer step on mask-update "
                                                            "iterations (reference: skipped)"),
    }

    @classmethod
    def check_recipe(cls, cfg):
        if cfg.iterative_T_end_percent > cfg.T_end_percent:
            raise ConfigError(f"config key 'iterative_T_end_percent': got {cfg.iterative_T_end_percent}, "
                              f"expected at most T_end_percent ({cfg.T_end_percent}): the density must "
                              "reach its target before mask updates stop")

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.check_recipe(cfg)
        try:
            self.schedule = ExponentialSchedule(self.total_steps, cfg.delta, cfg.T_end_percent,
                                                cfg.iterative_T_end_percent, self.final_density,
                                                cfg.alpha)
        except ValueError as err:
            raise ConfigError(f"config keys 'delta' / 'T_end_percent': {err}") from None
        params = {p.name: p for p in net.trainable_params()}
        self.conv_names = [n for n in self.names if len(params[n].shape) == 4]
        self.rank_term = None
        if cfg.lamb > 0 and self.conv_names:
            self.rank_term = RankLossTerm([params[n] for n in self.conv_names], cfg.lamb,
                                          cfg.partial_k, cfg.rank_svd)
        self.grad_cell = None
        logger.info(f"rpg: {len(self.names)} masked weights, {len(self.update_steps)} mask updates "
                    f"(every {cfg.delta} iterations, first {self.update_steps[0]}, last "
                    f"{self.update_steps[-1]}), final density reached at update "
                    f"{self.schedule.total_updates}, lamb {cfg.lamb}, partial_k {cfg.partial_k}")

    def _set_rank_targets(self, weights, ctx):
        if self.rank_term is not None and not self.rank_term.in_graph:
            self.rank_term.set_host_targets([weights[n] for n in self.conv_names],
                                            ctx.rank, ctx.group_size)

    def grow_signal(self, step, batch, ctx, weights):
        """|dense gradient of task + lamb * rank loss| on this iteration's batch; the iteration
        is consumed (its optimizer step skipped, as the reference)."""
        if self.grad_cell is None:
            self.grad_cell = ctx.dense_gradient_cell(self.names, self.rank_term)
        self._set_rank_targets(weights, ctx)
        _, task, extra, grads = self.grad_cell(*batch)
        task = float(task.asnumpy())
        require_finite_loss(task, step + 1, " (an RPG mask update)")  # before NaNs reach the masks
        self.rank_value = float(extra.asnumpy()) / self.cfg.lamb if self.rank_term is not None else None
        grads = {name: g.asnumpy() for name, g in zip(self.names, grads)}
        bad = [name for name, grad in grads.items() if not np.isfinite(grad).all()]
        if bad:  # a NaN input can leave the loss finite; the masks must not be built from NaN
            raise TrainingError(f"non-finite dense gradient for {len(bad)} weight(s) (first: {bad[0]}) at "
                                f"step {step + 1} (an RPG mask update); stopping. The last good "
                                "checkpoint is left as it was: check the data or lower lr_max")
        if self.rank_term is not None:
            failed = [n for n, ok in zip(self.conv_names, self.rank_term.ok_flags.asnumpy()) if ok < 0.5]
            if failed:
                self.logger.warning(f"rank loss: SVD failed or weight is all zero for {len(failed)} "
                                    f"layer(s), they contribute 0: {', '.join(failed[:5])}")
        return grads, task

    def after_update(self, step, batch, ctx, weights, loss, event):
        event.update(task_loss=loss, rank_loss=self.rank_value)
        loss = super().after_update(step, batch, ctx, weights, loss, event)
        if self.cfg.rpg_apply_update_step:
            # the step's rank loss must see the pruned weights, not the pre-update ones
            self._set_rank_targets(weights, ctx)
            loss = float(ctx.step_with_extra_loss("rpg", self.rank_term)(*batch).asnumpy())
        return loss

    def update_details(self, event):
        rank = event["rank_loss"]
        return (f" drop fraction {event['drop_fraction']:.4f} regrown {event['regrown']} task loss "
                f"{event['task_loss']:.4f} rank loss {'off' if rank is None else f'{rank:.6f}'}")
