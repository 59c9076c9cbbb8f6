"""PSAP's filter bookkeeping: the prunable filters of a ResNet as one flat array.

The prunable layers are the inner convs of its residual blocks (``surgery.prunable_layers``);
per-filter state (zeroed, protected, energies, importance) is one array over all of them, layer
``i`` owning the slice ``part(i)``.
"""
import numpy as np

from src.pruning.filters.surgery import prunable_layers


class FilterLayout:
    """``layers`` (``prunable_layers``), ``conv_names``, ``counts`` (filters per layer),
    ``offsets`` (where each layer's filters start) and ``total``."""

    def __init__(self, net):
        self.layers = prunable_layers(net)
        self.conv_names = [layer["conv"] for layer in self.layers]
        shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
        self.counts = np.array([shapes[n][0] for n in self.conv_names], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.total = int(self.counts.sum())

    def part(self, index):
        """Layer ``index``'s slice of a flat per-filter array."""
        return slice(self.offsets[index], self.offsets[index + 1])
