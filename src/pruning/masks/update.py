"""The generic mask update of the unstructured methods (RigL's shape, host NumPy):

    target density (the method's schedule)
      -> per-layer target masks (the method's distribution, e.g. one global magnitude threshold)
      -> drop: keep the largest |w| inside each layer's target, all but a fraction f of it
      -> grow: the f share by the method's grow score among the positions not kept
      -> regrown weights start at +0.0, dropped ones become +0.0

A method supplies the schedule (density, drop fraction), the distribution and the grow score
(``None``: no regrowth, the target masks are the new masks). Installing the result on the device
is the caller's (``HardMasks.install``), once per tensor.
"""
import numpy as np

from src.pruning.masks.mask_ops import drop_and_grow


def mask_update(weights, target_masks, grow_scores=None, fraction=0.0):
    """New masks and weights from ``target_masks`` ({name: bool}) by drop-and-grow.

    Returns (masks, new_weights, regrown): ``new_weights[name]`` is the weight where it was both
    in the target and in the new mask, +0.0 elsewhere (regrown positions were outside the target,
    so they start at 0, as in the reference); ``regrown`` counts the grown positions outside the
    target masks.
    """
    masks, new_weights, regrown = {}, {}, 0
    for name, target in target_masks.items():
        if grow_scores is None:
            mask = target
        else:
            mask, grown = drop_and_grow(weights[name], target, grow_scores[name], fraction)
            regrown += int(np.count_nonzero(grown))
        new_weights[name] = np.where(target & mask, weights[name], np.float32(0.0))
        masks[name] = mask
    return masks, new_weights, regrown

