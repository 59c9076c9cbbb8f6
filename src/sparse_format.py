"""A compact file for pruned weights, about the size of ``ideal_size_bytes``: the entropy of the
positions plus the values at their raw 32 bits. Deflate also shrinks the float32 values a little
(their exponent bytes repeat), so a file can come out below that "ideal" (0.94-0.96x measured).

Per sparse tensor the file holds its non-zero values (raw float32, C order) and their positions,
Elias-Fano coded: a position i in [0, N) is split into L low bits, stored plainly, and the high
part i >> L, stored as a unary-coded bit vector (bit (i_j >> L) + j set for the j-th non-zero).
With L chosen per tensor to minimise the exact bit count this costs about n * (2 + log2(N / n))
bits for n non-zeros among N weights, against the entropy floor N * H(n / N) ~ n * (1.44 +
log2(N / n)): a fraction of a bit per non-zero above the floor, at any density and for any
pattern (the cost does not depend on where the non-zeros are). Encoding and decoding are
vectorised NumPy (no Python loop per weight), so a ResNet-50 (25 M weights) takes well under a
second. The older deflated bitmask (format 1) cost ~1 bit per weight before compression and
deflate got it nowhere near H(density) bits; it is still read.

File layout (format 2): a NumPy ``.npz`` (zip, deflate) with three members:

- ``__format__``: UTF-8 JSON {"format": "rpg-sparse", "version": 2, "meta": {...},
  "tensors": [{"name", "shape", "kind": "dense" | "sparse", "nnz", "low_bits", "low_bytes",
  "high_bytes"}, ...]} in file order;
- ``values``: float32, all tensors' stored values concatenated in that order (a dense tensor all
  its values, a sparse tensor its non-zeros);
- ``positions``: uint8, per sparse tensor its low-bits bytes then its high-bits bytes.

A tensor is stored sparse when it has at least 2 dimensions and density <= ``DENSE_LIMIT``
(the same rule :func:`ideal_size_bytes` prices), otherwise dense. -0.0 is stored as +0.0
(:func:`canonical_zeros`): read-back is bit-exact against the canonical array. Values may
optionally be stored as float16 (``value_dtype="float16"``): half the value bytes, not
bit-exact (read back as float32 of the rounded values).

A reader of this module refuses a file of another format or an unknown version with one line
(:class:`SparseFormatError`).
"""
import json
import math
import os
import zipfile
import zlib

import numpy as np

from src.outputs import atomic_output

DENSE_LIMIT = 0.5  # tensors denser than this are stored dense: positions would cost more than they save
FORMAT_NAME = "rpg-sparse"
VERSION = 2
VALUE_DTYPES = {"float32": np.float32, "float16": np.float16}
_HEADER, _VALUES, _POSITIONS = "__format__", "values", "positions"


class SparseFormatError(ValueError):
    """A sparse file that is not ours, of an unknown version, or damaged (one-line message)."""


def canonical_zeros(array):
    """float32 copy with -0.0 turned into +0.0 (equal as numbers; only +0.0 is left implicit)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return np.where(array == 0, np.float32(0.0), array)


def _stored_sparse(array, nnz):
    return array.ndim >= 2 and array.size > 0 and nnz / array.size <= DENSE_LIMIT


# ------------------------------------------------------------------------------- Elias-Fano
def elias_fano_low_bits(count, universe):
    """The L in [0, 62] that minimises the exact Elias-Fano size of ``count`` sorted positions in
    [0, universe): count * L low bits + (count + ((universe - 1) >> L) + 1) high bits (the high
    vector's worst-case length, which the reader does not need: it is what the writer may use)."""
    if count == 0:
        return 0
    top = max(universe - 1, 0)
    return min(range(63), key=lambda L: count * L + count + (top >> L) + 1)


def _pack_fixed_width(values, width):
    """Pack non-negative ints into ``width`` bits each, most significant bit first."""
    if width == 0 or values.size == 0:
        return np.zeros(0, np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((values[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.ravel())


def _unpack_fixed_width(packed, count, width):
    if width == 0 or count == 0:
        return np.zeros(count, np.int64)
    bits = np.unpackbits(packed, count=count * width).reshape(count, width).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


def encode_positions(positions, universe):
    """Elias-Fano code of strictly increasing int positions in [0, universe).

    Returns (low_bits, low_bytes, high_bytes): the chosen L and the two packed uint8 arrays."""
    positions = np.asarray(positions, np.int64)
    count = positions.size
    low_bits = elias_fano_low_bits(count, universe)
    low = _pack_fixed_width(positions & ((np.int64(1) << low_bits) - 1), low_bits)
    if count == 0:
        return low_bits, low, np.zeros(0, np.uint8)
    high = np.zeros(int(positions[-1] >> low_bits) + count, np.uint8)
    high[(positions >> low_bits) + np.arange(count)] = 1  # unary gaps: j-th set bit at high_j + j
    return low_bits, low, np.packbits(high)


def decode_positions(low_bits, low, high, count):
    """Inverse of :func:`encode_positions`: the ``count`` positions as int64."""
    if count == 0:
        return np.zeros(0, np.int64)
    set_bits = np.flatnonzero(np.unpackbits(high))
    if set_bits.size != count:
        raise SparseFormatError(f"position stream holds {set_bits.size} entries, expected {count}")
    high_part = set_bits - np.arange(count)
    return (high_part << low_bits) | _unpack_fixed_width(low, count, low_bits)


# ------------------------------------------------------------------------------- write / read
def _encode_tensor(name, array, value_dtype):
    """(header entry, stored values, position bytes) of one canonical float32 tensor."""
    flat = array.ravel()
    nonzero = np.flatnonzero(flat)
    entry = {"name": name, "shape": [int(s) for s in array.shape]}
    if not _stored_sparse(array, nonzero.size):
        entry["kind"] = "dense"
        return entry, flat.astype(value_dtype), []
    low_bits, low, high = encode_positions(nonzero, flat.size)
    entry.update(kind="sparse", nnz=int(nonzero.size), low_bits=low_bits,
                 low_bytes=int(low.size), high_bytes=int(high.size))
    return entry, flat[nonzero].astype(value_dtype), [low, high]


def write_sparse(arrays, path, meta=None, value_dtype="float32", verify=None, overwrite=True):
    """Write {name: float32 array} to ``path`` (atomic). Returns the file size in bytes.

    ``value_dtype``: "float32" (default, bit-exact) or "float16" (half the value bytes, lossy).
    ``verify(temporary path)`` runs before the rename: if it raises, ``path`` is left as it was.
    ``overwrite=False`` refuses an existing ``path`` (src.outputs.OutputExists).
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {', '.join(VALUE_DTYPES)}, got {value_dtype!r}")
    dtype = VALUE_DTYPES[value_dtype]
    entries, values, positions = [], [], []
    for name, array in arrays.items():
        entry, vals, pos = _encode_tensor(name, canonical_zeros(array), dtype)
        entries.append(entry)
        values.append(vals)
        positions.extend(pos)
    header = {"format": FORMAT_NAME, "version": VERSION, "value_dtype": value_dtype,
              "meta": meta or {}, "tensors": entries}
    payload = {
        _HEADER: np.frombuffer(json.dumps(header, separators=(",", ":")).encode(), np.uint8),
        _VALUES: np.concatenate(values) if values else np.zeros(0, dtype),
        _POSITIONS: np.concatenate(positions) if positions else np.zeros(0, np.uint8),
    }
    with atomic_output(path, ".npz", overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **payload)
        if verify is not None:
            verify(tmp)
        size = os.path.getsize(tmp)
    return size


def _read_header(data, path):
    try:
        header = json.loads(data[_HEADER].tobytes().decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise SparseFormatError(f"{path}: unreadable sparse-file header ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise SparseFormatError(f"{path}: not an {FORMAT_NAME} file")
    if header.get("version") != VERSION:
        raise SparseFormatError(f"{path}: sparse-file version {header.get('version')!r} is not "
                                f"supported (this reader knows versions 1 and {VERSION})")
    return header


def _read_v2(data, path):
    header = _read_header(data, path)
    values = data[_VALUES].astype(np.float32)
    positions = data[_POSITIONS]
    arrays, v_at, p_at = {}, 0, 0
    try:
        for entry in header["tensors"]:
            shape = tuple(entry["shape"])
            size = math.prod(shape)
            if entry["kind"] == "dense":
                arrays[entry["name"]] = values[v_at:v_at + size].reshape(shape)
                v_at += size
                continue
            nnz, low_end = entry["nnz"], p_at + entry["low_bytes"]
            high_end = low_end + entry["high_bytes"]
            index = decode_positions(entry["low_bits"], positions[p_at:low_end],
                                     positions[low_end:high_end], nnz)
            flat = np.zeros(size, np.float32)
            flat[index] = values[v_at:v_at + nnz]
            arrays[entry["name"]] = flat.reshape(shape)
            v_at, p_at = v_at + nnz, high_end
    except SparseFormatError as err:
        raise SparseFormatError(f"{path}: damaged sparse file ({err})") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise SparseFormatError(f"{path}: damaged sparse file ({type(err).__name__}: {err})") from None
    if v_at != values.size or p_at != positions.size:
        raise SparseFormatError(f"{path}: damaged sparse file (stream lengths do not match its header)")
    return arrays, header["meta"]


def _read_v1(data):
    """Format 1 (no version field): per tensor ``name::shape`` + ``name::dense`` or a packed
    bitmask ``name::mask`` + ``name::values``; metadata under ``__meta__::key``."""
    arrays, meta = {}, {}
    keys = set(data.files)
    for key in keys:
        if key.startswith("__meta__::"):
            meta[key[len("__meta__::"):]] = json.loads(data[key].tobytes().decode())
    for key in sorted(k for k in keys if k.endswith("::shape")):
        name = key[:-len("::shape")]
        shape = tuple(int(s) for s in data[key])
        if f"{name}::dense" in keys:
            arrays[name] = data[f"{name}::dense"].reshape(shape)
            continue
        size = int(np.prod(shape))
        nonzero = np.unpackbits(data[f"{name}::mask"], count=size).astype(bool)
        flat = np.zeros(size, np.float32)
        flat[nonzero] = data[f"{name}::values"]
        arrays[name] = flat.reshape(shape)
    return arrays, meta


# What a damaged file raises while it is opened or its members are decompressed and decoded: a
# truncated or altered zip (BadZipFile, EOFError, zlib.error, NotImplementedError for an unknown
# zip version, RuntimeError for a flag saying "encrypted"), a missing member (KeyError), a header
# that does not match the streams (ValueError, IndexError, TypeError), an absurd shape (MemoryError).
_DAMAGE = (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError,
           zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, MemoryError, OverflowError)


def read_sparse(path):
    """Read a file written by ``write_sparse`` (format 2, or the older format 1); returns
    ({name: float32 array}, meta). Raises SparseFormatError for anything else, damaged files
    included (one line)."""
    try:
        data = np.load(path, allow_pickle=False)
    except _DAMAGE as err:
        raise SparseFormatError(f"{path}: cannot read as a sparse file ({_first_line(err)})") from None
    if not hasattr(data, "files"):
        raise SparseFormatError(f"{path}: not an {FORMAT_NAME} file (a single array, not .npz)")
    try:
        with data:
            return _read_members(data, path)
    except SparseFormatError:
        raise
    except _DAMAGE as err:
        raise SparseFormatError(f"{path}: damaged sparse file ({type(err).__name__}: "
                                f"{_first_line(err)})") from None


def _read_members(data, path):
    if _HEADER in data.files:
        return _read_v2(data, path)
    if any(k.endswith("::shape") for k in data.files):
        return _read_v1(data)
    raise SparseFormatError(f"{path}: not an {FORMAT_NAME} file")


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def ideal_size_bytes(arrays, value_bits=32):
    """Information-theoretic floor for the sparse tensors' encoding: non-zero values x 4 bytes plus
    N * H(density) bits for the positions; dense tensors counted at 4 bytes per value.

    ``value_bits``: bits per stored value (16 to compare a float16 file fairly)."""
    total_bits = 0.0
    for array in arrays.values():
        nonzero = int(np.count_nonzero(array))
        size = array.size
        density = nonzero / size if size else 0.0
        if array.ndim >= 2 and density <= DENSE_LIMIT:
            entropy = 0.0 if density in (0.0, 1.0) else \
                -(density * math.log2(density) + (1 - density) * math.log2(1 - density))
            total_bits += nonzero * value_bits + size * entropy
        else:
            total_bits += size * value_bits
    return total_bits / 8
