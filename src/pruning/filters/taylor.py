"""PSAP ``taylor_bn`` score: first-order Taylor importance of each channel's BN output.

Molchanov et al. (CVPR 2019): removing channel j changes the loss by about
gamma_j dL/dgamma_j + beta_j dL/dbeta_j; its square, summed over batches, is the importance.
The gradients come from an extra forward-backward on the last ``psap_taylor_batches`` batches
before each pruning step (``ctx.dense_gradient_cell``, so the training step itself is untouched);
the importance is averaged over those batches and reset after the step.
"""
import numpy as np

from src.pruning.filters.scores import filter_scores, taylor_bn_terms


class TaylorMixin:
    """The taylor_bn part of ``PSAPPruner`` (it owns ``taylor`` and ``taylor_batches``)."""

    def before_step(self, step, batch, ctx):
        """taylor_bn: accumulate the Taylor importance on the last batches before a pruning step
        (an extra forward-backward; the ordinary step still runs: returns None)."""
        if self.cfg.filter_score == "taylor_bn" and self._taylor_step(step):
            self._accumulate_taylor(batch, ctx)
        return None

    def _taylor_step(self, step):
        """Whether ``step`` is among the last psap_taylor_batches of an epoch that ends with a
        pruning step."""
        epoch, position = divmod(step, self.steps_per_epoch)
        first = max(self.steps_per_epoch - self.cfg.psap_taylor_batches, 0)
        return position >= first and self._prunes_after(epoch)

    def _accumulate_taylor(self, batch, ctx):
        """Add one batch's (gamma dL/dgamma + beta dL/dbeta)^2 per channel. The extra forward in
        training mode would update the BN moving statistics a second time with this batch: they
        are put back."""
        names = [layer["bn"][f] for layer in self.layers for f in ("gamma", "beta")]
        stats = [layer["bn"][f] for layer in self.layers for f in ("moving_mean", "moving_variance")]
        if self._taylor_cell is None:
            self._taylor_cell = ctx.dense_gradient_cell(names)
        saved = ctx.get_weights(stats)
        values = ctx.get_weights(names)
        grads = self._taylor_cell(*batch)[3]
        ctx.set_weights(saved)
        for i, layer in enumerate(self.layers):
            gamma, beta = layer["bn"]["gamma"], layer["bn"]["beta"]
            self.taylor[self._slice(i)] += taylor_bn_terms(
                values[gamma], values[beta], np.asarray(grads[2 * i].asnumpy()),
                np.asarray(grads[2 * i + 1].asnumpy()))
        self.taylor_batches += 1

    def _scores(self, i, weight, bn):
        taylor = None
        if self.cfg.filter_score == "taylor_bn":
            if self.taylor_batches == 0:
                self.logger.warning("psap: no Taylor importance was accumulated before this "
                                    "step (resumed mid-interval?); using bn_l2 for it")
                return filter_scores(weight, "bn_l2", bn=bn)
            taylor = self.taylor[self._slice(i)] / self.taylor_batches
        return filter_scores(weight, self.cfg.filter_score, bn=bn, taylor=taylor)

    def _reset_taylor(self):
        self.taylor[:] = 0.0
        self.taylor_batches = 0
