"""Input pipelines: ImageNet (JPEG class folders), CIFAR-10 (binary batches), Fashion-MNIST (IDX files).

``create_dataset`` returns a batched ``mindspore.dataset`` with the columns "image" (float32, NCHW,
normalised) and "label" (int32). Problems a user can fix (bad path, missing or malformed files)
raise ``DataError`` with a one-line message that names the offending path.

Sample order, subsets and shards:
- Every split goes through one ``DistributedSampler`` (a single shard when not distributed). It
  shuffles in training with the global dataset seed, which ``create_dataset`` sets from ``seed``,
  and reshuffles every epoch; all shards share the permutation, so together they cover the split
  once per epoch. When the sample count is not a multiple of ``num_shards`` the sampler wraps
  around so that every shard gets the same number of samples (ranks must run equal step counts).
- ``num_samples`` selects a fixed subset before sharding. CIFAR-10 and Fashion-MNIST store
  their samples in random class order, so the subset is the first N samples of the split.
  ImageFolder lists samples sorted by class, so there the subset is N evenly spaced samples,
  which keeps every class represented.
"""
import gzip
import os
import zlib

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np

from src.errors import ConfigError, DataError  # noqa: F401  (raised here, imported from here by callers)

_INFO = {
    "imagenet": {"num_classes": 1000, "in_channels": 3, "image_size": 224},
    "cifar10": {"num_classes": 10, "in_channels": 3, "image_size": 32},
    "fashion_mnist": {"num_classes": 10, "in_channels": 1, "image_size": 28},
}

# Mean and std on the 0-255 scale: Normalize then turns the uint8 images into float32 in one step.
_MEAN_STD = {
    "imagenet": ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    "cifar10": ([0.4914 * 255, 0.4822 * 255, 0.4465 * 255], [0.2470 * 255, 0.2435 * 255, 0.2616 * 255]),
    "fashion_mnist": ([0.2860 * 255], [0.3530 * 255]),
}

# ImageFolderDataset matches extensions case-sensitively, and ImageNet uses ".JPEG".
_IMAGE_EXTENSIONS = [".JPEG", ".jpeg", ".JPG", ".jpg", ".PNG", ".png"]

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + channel-major 3x32x32 image
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # IDX magic numbers: unsigned bytes, 3 and 1 dimensions
_FASHION_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def split_path(cfg, training):
    """Folder of a split: ``data_path`` for training; ``eval_data_path`` for evaluation when set (the
    model zoo's ``eval_dataset_path``), else ``data_path``. Returns (path, name of its config key)."""
    if not training and cfg.eval_data_path:
        return cfg.eval_data_path, "eval_data_path"
    return cfg.data_path, "data_path"


def dataset_info(dataset):
    """Return dict(num_classes, in_channels, image_size) of a supported data set (native image size)."""
    if dataset not in _INFO:
        raise DataError(f"unknown dataset '{dataset}'; expected one of {', '.join(_INFO)}")
    return dict(_INFO[dataset])


def input_shape(cfg, batch=1):
    """The network's input shape for a recipe: (batch, in_channels, size, size), size being
    image_size or the data set's native size (what the pipelines deliver; the one place this is
    derived)."""
    size = cfg.image_size or dataset_info(cfg.dataset)["image_size"]
    return (batch, cfg.in_channels, size, size)


def create_dataset(dataset, data_path, training, batch_size, image_size=None, eval_resize=256,
                   num_samples=0, num_shards=1, shard_id=0, num_parallel_workers=2,
                   crop_padding=4, seed=42, drop_remainder=None, path_key="data_path", num_classes=None):
    """Return a batched dataset with columns "image" (float32 NCHW, normalised) and "label" (int32).

    dataset: "imagenet" | "cifar10" | "fashion_mnist"; training selects the train split and augmentation.
    image_size: output side length; None = the data set's native size (224 for ImageNet). CIFAR-10 and
    Fashion-MNIST images are resized only when it differs from their native 32 / 28.
    eval_resize: ImageNet evaluation resizes the short side to this before the centre crop.
    num_samples: 0 = whole split, else a fixed subset of N samples taken before sharding (see module doc).
    drop_remainder: None = drop the last partial batch in training only.
    path_key: the config key that gave ``data_path``, named when the folder is missing.
    num_classes: the network's class count; a split with a label beyond it is a ConfigError (checked
    on the labels read, or on the class folders of ImageNet), before anything is compiled.
    Sets the global dataset seed (``ds.config.set_seed(seed)``) so that shuffling and augmentation repeat.
    """
    info = dataset_info(dataset)
    _check_arguments(batch_size, num_samples, num_shards, shard_id)
    image_size = image_size or info["image_size"]
    drop_remainder = training if drop_remainder is None else drop_remainder
    data_path = os.fspath(data_path)
    _check_dir(data_path, path_key)
    # MindSpore refuses more workers than cores (a traceback); the ImageNet recipes ask for 8
    num_parallel_workers = max(1, min(num_parallel_workers, os.cpu_count() or 1))
    # DistributedSampler reads the global seed when it is constructed, so the seed goes first.
    ds.config.set_seed(seed)
    sampler = ds.DistributedSampler(num_shards, shard_id, shuffle=training)
    if dataset == "imagenet":
        data = _imagenet(data_path, training, image_size, eval_resize, num_samples, sampler,
                         num_parallel_workers, num_classes)
    else:
        loader = _load_cifar10 if dataset == "cifar10" else _load_fashion_mnist
        images, labels = loader(data_path, training, num_samples)
        if num_classes is not None:
            _check_num_classes(num_classes, int(labels.max()) + 1 if labels.size else 0,
                               f"{data_path} holds labels up to {int(labels.max()) if labels.size else -1}")
        # One source worker: more would copy the arrays into subprocesses for no gain (slicing is cheap).
        data = ds.NumpySlicesDataset((images, labels), ["image", "label"], sampler=sampler)
        data = data.map(_small_image_ops(dataset, image_size, training, crop_padding), "image",
                        num_parallel_workers=num_parallel_workers)
    return data.batch(batch_size, drop_remainder=drop_remainder)


def batches(data):
    """Iterate a dataset's (image, label) batches; a failing pipeline (e.g. an undecodable image)
    becomes a DataError whose one line names the failing operation and file."""
    try:
        yield from data.create_tuple_iterator(num_epochs=1)
    except RuntimeError as err:
        detail = [line.strip() for line in str(err).splitlines() if line.strip().startswith("[ERROR]")]
        if not detail:
            raise
        raise DataError("data pipeline failed: " + detail[0][len("[ERROR]"):].strip()) from None


def _check_subset(num_samples, available, training, where):
    """A subset larger than the split is a recipe mistake (it would silently train on less)."""
    if num_samples > available:
        key = "train_samples" if training else "eval_samples"
        raise ConfigError(f"config key '{key}': got {num_samples}, but {where} holds only "
                          f"{available} samples (0 = all)")


def _check_arguments(batch_size, num_samples, num_shards, shard_id):
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if num_samples < 0:
        raise DataError(f"num_samples must be >= 0 (0 = all), got {num_samples}")
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise DataError(f"shard_id must be in [0, num_shards), got shard_id={shard_id}, num_shards={num_shards}")


def _check_dir(path, key="data_path"):
    if not os.path.exists(path):
        raise DataError(f"{key} '{path}' does not exist")
    if not os.path.isdir(path):
        raise DataError(f"{key} '{path}' is not a directory")
    if not os.listdir(path):
        raise DataError(f"{key} '{path}' is an empty directory")


def _check_labels(labels, path, num_classes):
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..{num_classes - 1}; wrong data set?")
    return labels.astype(np.int32)


def _check_num_classes(num_classes, needed, where):
    """A network with fewer outputs than the data set's labels fails deep in the loss (a traceback)."""
    if num_classes < needed:
        raise ConfigError(f"config key 'num_classes': got {num_classes}, but {where} ({needed} "
                          f"classes): set --num_classes {needed}")


def _small_image_ops(dataset, image_size, training, crop_padding):
    """Transforms of the in-memory 28x28 / 32x32 sets: HWC uint8 in, normalised CHW float32 out."""
    native = _INFO[dataset]["image_size"]
    ops = [vision.RandomCrop(native, padding=crop_padding), vision.RandomHorizontalFlip()] if training else []
    if image_size != native:
        ops.append(vision.Resize((image_size, image_size)))
    mean, std = _MEAN_STD[dataset]
    return ops + [vision.Normalize(mean, std), vision.HWC2CHW()]


# ---------------------------------------------------------------- ImageNet (ImageFolder)

def _imagenet(data_path, training, image_size, eval_resize, num_samples, sampler, workers,
              num_classes=None):
    root = _imagenet_root(data_path, training)
    if num_classes is not None:  # ImageFolder numbers the class folders 0, 1, ...
        with os.scandir(root) as entries:
            folders = sum(1 for entry in entries if entry.is_dir())
        _check_num_classes(num_classes, folders, f"{root} holds {folders} class folders")
    if num_samples:
        total = ds.ImageFolderDataset(root, extensions=_IMAGE_EXTENSIONS).get_dataset_size()
        _check_subset(num_samples, total, training, root)
        if num_samples < total:
            # The folder lists samples sorted by class: evenly spaced indices keep every class.
            sampler.add_child(ds.SubsetSampler((np.arange(num_samples) * total // num_samples).tolist()))
    # decode=False: in training RandomCropDecodeResize decodes only the cropped region (much faster).
    data = ds.ImageFolderDataset(root, decode=False, extensions=_IMAGE_EXTENSIONS, sampler=sampler,
                                 num_parallel_workers=workers)
    if training:
        ops = [vision.RandomCropDecodeResize(image_size, scale=(0.08, 1.0), ratio=(0.75, 1.333)),
               vision.RandomHorizontalFlip()]
    else:
        ops = [vision.Decode(), vision.Resize(eval_resize), vision.CenterCrop(image_size)]
    mean, std = _MEAN_STD["imagenet"]
    return data.map(ops + [vision.Normalize(mean, std), vision.HWC2CHW()], "image",
                    num_parallel_workers=workers)


# Split folders looked for inside data_path, in order: ours, then the model zoo's evaluation folder
# (official/cv/ResNet keeps train/ beside validation_preprocess/).
_IMAGENET_SPLITS = {True: ("train",), False: ("val", "validation_preprocess")}


def _imagenet_root(data_path, training):
    """The split folder: data_path/train, or data_path/val or data_path/validation_preprocess (the
    model zoo's layout), else data_path itself if it holds class folders."""
    _check_dir(data_path)
    splits = _IMAGENET_SPLITS[training]
    for split in splits:
        split_dir = os.path.join(data_path, split)
        if os.path.isdir(split_dir):
            if not _has_class_images(split_dir):
                raise DataError(f"{split_dir}: no class sub-folders holding {'/'.join(_IMAGE_EXTENSIONS)} images")
            return split_dir
    if not _has_class_images(data_path):
        raise DataError(f"{data_path}: no {' or '.join(s + '/' for s in splits)} folder and no class "
                        f"sub-folders holding {'/'.join(_IMAGE_EXTENSIONS)} images")
    return data_path


def _has_class_images(root):
    """True when some sub-folder of root holds an image file (stops at the first one found)."""
    extensions = tuple(_IMAGE_EXTENSIONS)
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    if any(f.name.endswith(extensions) for f in files):
                        return True
    return False


# ---------------------------------------------------------------- CIFAR-10 (binary version)

def _load_cifar10(data_path, training, num_samples):
    """Read the split's records into (images N x 32 x 32 x 3 uint8, labels int32).

    Own reader because ds.Cifar10Dataset refuses files with fewer than 10,000 records.
    """
    _check_dir(data_path)
    nested = os.path.join(data_path, "cifar-10-batches-bin")
    folder = nested if os.path.isdir(nested) else data_path
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if training else ["test_batch.bin"]
    missing = [name for name in names if not os.path.exists(os.path.join(folder, name))]
    _check_regular([os.path.join(folder, name) for name in names if name not in missing])
    if missing:
        raise DataError(f"{folder}: missing CIFAR-10 binary file(s) {', '.join(missing)}")
    records = _read_cifar_records([os.path.join(folder, name) for name in names], num_samples, training)
    labels = _check_labels(records[:, 0], folder, 10)
    # Records are channel-major (CHW); the vision ops expect HWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_cifar_records(paths, num_samples, training):
    """Concatenate the records of the files, reading only the first num_samples (0 = all)."""
    counts = []
    for path in paths:  # check every file before reading any, so that a bad one fails fast
        size = os.path.getsize(path)
        if size == 0 or size % _CIFAR_RECORD:
            raise DataError(f"{path}: size {size} bytes is not a positive multiple of the "
                            f"{_CIFAR_RECORD}-byte CIFAR-10 record (truncated or not CIFAR-10 binary?)")
        counts.append(size // _CIFAR_RECORD)
    _check_subset(num_samples, sum(counts), training, os.path.dirname(paths[0]))
    remaining = num_samples or sum(counts)
    chunks = []
    for path, count in zip(paths, counts):
        count = min(count, remaining)
        chunks.append(np.fromfile(path, np.uint8, count * _CIFAR_RECORD).reshape(count, _CIFAR_RECORD))
        remaining -= count
    return np.concatenate(chunks)


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

def _load_fashion_mnist(data_path, training, num_samples):
    """Read the split into (images N x 28 x 28 x 1 uint8, labels int32); files may be plain or .gz."""
    _check_dir(data_path)
    names = _FASHION_FILES[training]
    paths = [_plain_or_gz(data_path, name) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    _check_regular([path for path in paths if path is not None])
    if missing:
        raise DataError(f"{data_path}: missing Fashion-MNIST file(s) {', '.join(missing)} (plain or .gz); "
                        f"run scripts/get_fashion_mnist.sh {data_path}")
    image_count, images = _read_idx(paths[0], _IDX_IMAGES, num_samples)
    label_count, labels = _read_idx(paths[1], _IDX_LABELS, num_samples)
    _check_subset(num_samples, image_count, training, paths[0])
    if image_count != label_count:
        raise DataError(f"{data_path}: {paths[0]} holds {image_count} images but {paths[1]} "
                        f"holds {label_count} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    return images[..., None], _check_labels(labels, paths[1], 10)


def _plain_or_gz(folder, name):
    """Path of name or name.gz in folder (plain first: no decompression), None if neither exists."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


def _check_regular(paths):
    """A data file that is a device, FIFO or folder (e.g. a link to /dev/zero) is named as such,
    not read (a device can be endless) and not called missing."""
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: not a regular file (a device, pipe or folder); expected a data file")


def _read_idx(path, magic, limit):
    """Read an IDX file of unsigned bytes: (item count in the header, array of the first `limit` items).

    limit 0 = all items. Only the needed bytes are read, so a small subset of a big file is fast.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            found = int.from_bytes(f.read(4), "big")
            if found != magic:
                raise DataError(f"{path}: bad IDX magic number {found}, expected {magic} "
                                f"({'images' if magic == _IDX_IMAGES else 'labels'} file)")
            ndim = magic & 0xFF
            header = f.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = [int(d) for d in np.frombuffer(header, ">u4")]
            count = min(dims[0], limit) if limit else dims[0]
            size = count * int(np.prod(dims[1:], dtype=np.int64))
            body = f.read(size)
    except (OSError, EOFError, zlib.error) as err:  # unreadable file, bad or truncated gzip stream
        raise DataError(f"{path}: cannot read ({err})") from None
    if len(body) < size:
        raise DataError(f"{path}: truncated, the header announces {dims[0]} items but the data ends early")
    return dims[0], np.frombuffer(body, np.uint8).reshape([count] + dims[1:])
