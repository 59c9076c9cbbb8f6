"""PSAP ``taylor_bn`` score: first-order Taylor importance of each channel's BN output.

Molchanov et al. (CVPR 2019): removing channel j changes the loss by about
gamma_j dL/dgamma_j + beta_j dL/dbeta_j; its square, summed over batches, is the importance.
The gradients come from an extra forward-backward on the last ``psap_taylor_batches`` batches
before each pruning step (``ctx.dense_gradient_cell``, so the training step itself is untouched);
the importance is averaged over those batches and reset after the step.
"""
import numpy as np

from src.pruning.filters.scores import taylor_bn_terms


class TaylorImportance:
    """The accumulated Taylor importance of one PSAP run over the flat filter array of ``layout``
    (``FilterLayout``), with its own ``state_dict``. ``prunes_after(epoch)``: whether a pruning
    step ends that epoch (the pruner's schedule)."""

    def __init__(self, cfg, layout, steps_per_epoch, prunes_after):
        self.cfg, self.layout = cfg, layout
        self.steps_per_epoch = steps_per_epoch
        self.prunes_after = prunes_after
        self.importance = np.zeros(layout.total, dtype=np.float64)
        self.batches = 0
        self.cell = None

    def wanted(self, step):
        """Whether ``step`` is among the last psap_taylor_batches of an epoch that ends with a
        pruning step (and the score is taylor_bn)."""
        if self.cfg.filter_score != "taylor_bn":
            return False
        epoch, position = divmod(step, self.steps_per_epoch)
        first = max(self.steps_per_epoch - self.cfg.psap_taylor_batches, 0)
        return position >= first and self.prunes_after(epoch)

    def accumulate(self, batch, ctx):
        """Add one batch's (gamma dL/dgamma + beta dL/dbeta)^2 per channel. The extra forward in
        training mode would update the BN moving statistics a second time with this batch: they
        are put back."""
        layers = self.layout.layers
        names = [layer["bn"][f] for layer in layers for f in ("gamma", "beta")]
        stats = [layer["bn"][f] for layer in layers for f in ("moving_mean", "moving_variance")]
        if self.cell is None:
            self.cell = ctx.dense_gradient_cell(names)
        saved = ctx.get_weights(stats)
        values = ctx.get_weights(names)
        grads = self.cell(*batch)[3]
        ctx.set_weights(saved)
        for i, layer in enumerate(layers):
            gamma, beta = layer["bn"]["gamma"], layer["bn"]["beta"]
            self.importance[self.layout.part(i)] += taylor_bn_terms(
                values[gamma], values[beta], np.asarray(grads[2 * i].asnumpy()),
                np.asarray(grads[2 * i + 1].asnumpy()))
        self.batches += 1

    def mean(self, index):
        """Layer ``index``'s importance averaged over the batches (None before any batch)."""
        return self.importance[self.layout.part(index)] / self.batches if self.batches else None

    def reset(self):
        self.importance[:] = 0.0
        self.batches = 0

    def state_dict(self):
        return {"psap_taylor": self.importance.copy(), "psap_taylor_batches": np.int64(self.batches)}

    def load_state_dict(self, state):
        """Both keys are absent in checkpoints of older versions: nothing accumulated then."""
        if state.get("psap_taylor") is not None:
            self.importance = np.asarray(state["psap_taylor"]).astype(np.float64).reshape(-1)
        if state.get("psap_taylor_batches") is not None:
            self.batches = int(np.asarray(state["psap_taylor_batches"]))
