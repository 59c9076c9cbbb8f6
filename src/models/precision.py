"""Mixed precision (``amp_level``) of the training step.

The network a recipe builds (``build_network``) is always float32: evaluation, export, pruners
and checkpoints see float32 master weights. For ``amp_level`` O1-O3 the train step runs a *twin*:
a second network of the same architecture that holds the very same Parameter objects (so the
optimizer, the masks and every checkpoint act on the float32 master weights) and is cast with
MindSpore's ``Cell.to_float`` (O2/O3: ``ms.amp.auto_mixed_precision``):

- O1: convolutions and the classifier (the Conv2d and Dense cells) in float16, their outputs cast
  back to float32. MindSpore's O1 casts the operators of its white list (Conv2D, MatMul, ReLU, ...)
  through its ``rewrite`` package, which writes the generated network source into
  ``./rewritten_network/`` of the working directory on every run; casting the cells gives the same
  float16 convolutions and matrix products without that. (ReLU stays float32: it is exact in
  either precision, the next convolution rounds its input to float16 anyway.)
- O2: every cell in float16 except BatchNorm (MindSpore's black list), which stays float32;
- O3: the same cast as O2. MindSpore's bare O3 also casts BatchNorm; with BatchNorm kept in
  float32, as this project requires, ``build_train_network(level="O3", keep_batchnorm_fp32=True)``
  itself falls back to O2's cast, and for these ResNets (only BatchNorm is on the black list)
  that is the whole difference. Accepted so that a zoo recipe naming O3 runs.

At every level the network's output is cast to float32 before the loss, so the loss (and the
static loss scale applied to it in ``MaskedTrainStep``) is float32. The float16 casts are
inserted inside the graph; the Parameters themselves stay float32.
"""
import mindspore as ms
from mindspore import nn, ops

AMP_LEVELS = ("O0", "O1", "O2", "O3")
# Cells O1 computes in float16 (see module doc).
_O1_CELLS = (nn.Conv2d, nn.Dense)


class _Float32Output(nn.Cell):
    """Casts the wrapped network's logits to float32 (the loss runs in float32)."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)  # keeps the parameter names of the network
        self.network = network

    def construct(self, x):
        return ops.cast(self.network(x), ms.float32)


def _cast_cells(network, kinds, dtype):
    """In place: every sub-cell of one of ``kinds`` computes in ``dtype`` and returns float32."""
    changed = False
    for name, cell in list(network.name_cells().items()):
        if isinstance(cell, kinds):
            # the same in-place replacement MindSpore's own O2 makes for its black list
            network._cells[name] = _Float32Output(cell.to_float(dtype))  # pylint: disable=protected-access
            changed = True
        else:
            _cast_cells(cell, kinds, dtype)
    if isinstance(network, nn.SequentialCell) and changed:
        network.cell_list = list(network.cells())


def share_parameters(source, target):
    """Make every cell of ``target`` hold the Parameter objects of the same-named cell of
    ``source`` (same architecture). Afterwards both compute with one set of weights."""
    cells = dict(source.cells_and_names())
    for cell_name, cell in target.cells_and_names():
        own = cells.get(cell_name)
        if own is None or set(own._params) != set(cell._params):  # pylint: disable=protected-access
            raise ValueError(f"cannot share parameters: cell '{cell_name}' differs between the networks")
        for key, param in own._params.items():  # pylint: disable=protected-access
            cell.insert_param_to_cell(key, param)
    source_ids = {id(p) for p in source.get_parameters()}
    if any(id(p) not in source_ids for p in target.get_parameters()):
        raise ValueError("cannot share parameters: the twin network kept parameters of its own")


def training_network(net, amp_level, build_twin):
    """The network the train step runs: ``net`` itself at O0, else a mixed-precision twin of it
    that shares its float32 Parameters. ``build_twin()`` builds a fresh network of the same
    architecture (its own freshly initialised Parameters are replaced by ``net``'s)."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level {amp_level!r}: expected one of {', '.join(AMP_LEVELS)}")
    if amp_level == "O0":
        return net
    twin = build_twin()
    share_parameters(net, twin)
    if amp_level == "O1":
        _cast_cells(twin, _O1_CELLS, ms.float16)
        return _Float32Output(twin)
    # O3 with BatchNorm kept in float32 is O2's cast (see module doc)
    return _Float32Output(ms.amp.auto_mixed_precision(twin, "O2"))
