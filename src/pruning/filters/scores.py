"""PSAP filter importance: which filters of a layer are pruned first (low score = pruned first).

``l2`` and ``fpgm`` look at the conv filter alone (SFP, FPGM). Behind BatchNorm the filter's scale
means nothing: BN divides it out, so a regrown filter whose norm exploded is no more useful than
before, and a small filter with a large gamma is not weak. The BN-aware scores look at what the
channel actually passes on:
- ``bn_l2``: |gamma_j| / sqrt(var_j + eps) * ||w_j||, the L2 norm of the filter with its BN scale
  folded in (eval-mode conv+BN is a conv with weights w_j * gamma_j / sqrt(var_j + eps));
  invariant to rescaling w_j once the moving variance has followed;
- ``bn_energy``: the variance of the channel's post-ReLU output, relu(z) with
  z ~ N(beta_j, s_j^2), s_j = |gamma_j| sqrt(var_j / (var_j + eps)) (the BN output's spread); a
  channel that is constant (zero filter) or whose ReLU is dead (beta << -s) carries nothing;
- ``taylor_bn``: first-order Taylor estimate of the loss change when the channel's BN output is
  removed (Molchanov et al., CVPR 2019), sum over batches of (gamma_j dL/dgamma_j +
  beta_j dL/dbeta_j)^2, accumulated by ``PSAPPruner.before_step`` on the last batches before a
  pruning step.
With a BN-aware score the layer's weight sparsity (the adaptive layer ratios) is measured on the
BN-folded weights as well (``folded_weight``), so selection, protection and layer ratios all see
the channel through its BN.
"""
import math

import numpy as np

PLAIN_SCORES = ("l2", "fpgm")
BN_SCORES = ("bn_l2", "bn_energy", "taylor_bn")
SCORES = PLAIN_SCORES + BN_SCORES


def _flat(weight):
    return np.asarray(weight, dtype=np.float64).reshape(np.shape(weight)[0], -1)


def bn_scale(bn):
    """|gamma_j| / sqrt(var_j + eps) per channel (``bn``: gamma, moving_variance, eps)."""
    gamma = np.abs(np.asarray(bn["gamma"], dtype=np.float64))
    var = np.maximum(np.asarray(bn["moving_variance"], dtype=np.float64), 0.0)
    return gamma / np.sqrt(var + float(bn["eps"]))


def folded_weight(weight, bn):
    """The conv weights with each filter multiplied by its BN scale (eval-mode conv+BN)."""
    weight = np.asarray(weight, dtype=np.float64)
    return weight * bn_scale(bn).reshape((-1,) + (1,) * (weight.ndim - 1))


def relu_gaussian_variance(mean, std):
    """Var[relu(z)] for z ~ N(mean, std^2), elementwise; 0 where std == 0 (a constant)."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    result = np.zeros(np.broadcast(mean, std).shape)
    live = std > 0
    m, s = np.broadcast_to(mean, result.shape)[live], np.broadcast_to(std, result.shape)[live]
    a = m / s
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in a.reshape(-1)]))
    pdf = np.exp(-0.5 * a ** 2) / math.sqrt(2.0 * math.pi)
    first = m * cdf + s * pdf
    second = (m ** 2 + s ** 2) * cdf + m * s * pdf
    result[live] = np.maximum(second - first ** 2, 0.0)
    return result


def bn_energy_scores(weight, bn):
    """``bn_energy`` (module doc): post-ReLU output variance of each channel."""
    var = np.maximum(np.asarray(bn["moving_variance"], dtype=np.float64), 0.0)
    gamma = np.abs(np.asarray(bn["gamma"], dtype=np.float64))
    spread = gamma * np.sqrt(var / (var + float(bn["eps"])))
    spread = np.where(np.any(_flat(weight) != 0, axis=1), spread, 0.0)   # zero filter: constant
    return relu_gaussian_variance(np.asarray(bn["beta"], dtype=np.float64), spread)


def taylor_bn_terms(gamma, beta, grad_gamma, grad_beta):
    """One batch's Taylor importance (gamma dL/dgamma + beta dL/dbeta)^2 per channel."""
    term = (np.asarray(gamma, np.float64) * np.asarray(grad_gamma, np.float64)
            + np.asarray(beta, np.float64) * np.asarray(grad_beta, np.float64))
    return term ** 2


def filter_scores(weight, kind="l2", bn=None, taylor=None):
    """Importance of each output filter (low = prune first).

    l2: the filter's L2 norm (SFP). fpgm: the sum of Euclidean distances to the layer's other
    filters (FPGM: filters near the geometric median are the most replaceable). bn_l2, bn_energy
    need ``bn`` ({gamma, beta, moving_variance, eps} of the layer's BatchNorm), taylor_bn the
    accumulated ``taylor`` importance (module doc).
    """
    flat = _flat(weight)
    if kind == "l2":
        return np.sqrt(np.sum(flat ** 2, axis=1))
    if kind == "fpgm":
        sq = np.sum(flat ** 2, axis=1)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
        return np.sqrt(dist2).sum(axis=1)
    if kind == "bn_l2":
        return bn_scale(bn) * np.sqrt(np.sum(flat ** 2, axis=1))
    if kind == "bn_energy":
        return bn_energy_scores(weight, bn)
    if kind == "taylor_bn":
        if taylor is None:
            raise ValueError("filter score taylor_bn needs the accumulated Taylor importance")
        return np.asarray(taylor, dtype=np.float64).reshape(-1)
    raise ValueError(f"unknown filter score '{kind}'; choose one of {', '.join(SCORES)}")
