"""Tests of src/dataset.py and scripts/get_fashion_mnist.sh on small files in the real formats."""
import gzip
import os
import struct
import subprocess

import numpy as np
import pytest

from PIL import Image

from src.dataset import DataError, create_dataset, dataset_info
from src.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "get_fashion_mnist.sh")
SYSTEM_FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = 0.2860 * 255, 0.3530 * 255
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465]) * 255
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616]) * 255

# Fake Fashion-MNIST: every image is one grey level that identifies the sample.
TRAIN_IDS, TEST_IDS = np.arange(40), 100 + np.arange(20)


def collect(data):
    """All rows of a dataset as (images, labels, batch sizes)."""
    images, labels, sizes = [], [], []
    for image, label in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        images.append(image)
        labels.append(label)
        sizes.append(len(label))
    return np.concatenate(images), np.concatenate(labels), sizes


def fashion_ids(images):
    """Sample ids of fake Fashion-MNIST images; the centre pixel survives the padded random crop."""
    return np.rint(images[:, 0, 14, 14] * FASHION_STD + FASHION_MEAN).astype(int)


def write_idx(path, array, magic=None):
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(payload)


def write_fashion(folder, gz=True):
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, ids in (("train", TRAIN_IDS), ("t10k", TEST_IDS)):
        images = np.repeat(ids, 28 * 28).reshape(-1, 28, 28)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), ids % 10)
    return str(folder)


@pytest.fixture(name="fashion")
def fixture_fashion(tmp_path):
    return write_fashion(str(tmp_path / "fashion"))


def write_cifar(folder, records_per_file=2, test_records=10, seed=0):
    """CIFAR-10 binary files with random images; returns {file name: (labels, CHW images)}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    contents = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        count = test_records if name == "test_batch.bin" else records_per_file
        labels = rng.randint(0, 10, count) if name != "test_batch.bin" else np.arange(count) % 10
        images = rng.randint(0, 256, (count, 3, 32, 32))
        records = np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1).astype(np.uint8)
        records.tofile(os.path.join(folder, name))
        contents[name] = (labels, images)
    return contents


def write_image_tree(root, per_class):
    """root/<class>/*.JPEG with solid colours; returns the red level of each image in folder order."""
    reds = []
    for label, cls in enumerate(("n01_cat", "n02_dog")):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            red = 40 * (label * per_class + i) + 20
            colour = np.array([red, 128, 255 - red], np.uint8)
            Image.fromarray(np.tile(colour, (24, 30, 1))).save(os.path.join(root, cls, f"img_{i}.JPEG"))
            reds.append(red)
    return reds


@pytest.fixture(name="imagenet")
def fixture_imagenet(tmp_path):
    root = str(tmp_path / "imagenet")
    write_image_tree(os.path.join(root, "train"), per_class=3)
    write_image_tree(os.path.join(root, "val"), per_class=2)
    return root


def imagenet_reds(images):
    """Approximate red level of solid-colour images (JPEG is lossy)."""
    return np.rint(images[:, 0].mean(axis=(1, 2)) * 0.229 * 255 + 0.485 * 255).astype(int)


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_eval_reads_test_split_in_order(tmp_path, gz):
    images, labels, sizes = collect(create_dataset("fashion_mnist", write_fashion(str(tmp_path), gz), False, 8))
    assert images.shape == (20, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert sizes == [8, 8, 4]  # evaluation keeps the last partial batch
    np.testing.assert_array_equal(fashion_ids(images), TEST_IDS)
    np.testing.assert_array_equal(labels, TEST_IDS % 10)
    np.testing.assert_allclose(images[0, 0], (100 - FASHION_MEAN) / FASHION_STD, rtol=1e-5)


def test_fashion_train_is_shuffled_augmented_and_drops_remainder(fashion):
    images, labels, sizes = collect(create_dataset("fashion_mnist", fashion, True, 16))
    ids = fashion_ids(images)
    assert sizes == [16, 16]
    assert len(set(ids)) == 32 and set(ids) <= set(TRAIN_IDS)
    assert list(ids) != sorted(ids)
    np.testing.assert_array_equal(labels, ids % 10)
    # Padded random crops shift some images, bringing in padding pixels at the borders.
    assert any(img.min() < img.max() for img in images)


def test_fashion_seed_makes_training_reproducible(fashion):
    first = collect(create_dataset("fashion_mnist", fashion, True, 8, seed=1))
    again = collect(create_dataset("fashion_mnist", fashion, True, 8, seed=1))
    other = collect(create_dataset("fashion_mnist", fashion, True, 8, seed=2))
    np.testing.assert_array_equal(first[0], again[0])
    assert list(fashion_ids(first[0])) != list(fashion_ids(other[0]))


def test_fashion_num_samples_takes_the_first_samples(fashion):
    images, _, _ = collect(create_dataset("fashion_mnist", fashion, False, 8, num_samples=5))
    np.testing.assert_array_equal(fashion_ids(images), TEST_IDS[:5])
    images, _, _ = collect(create_dataset("fashion_mnist", fashion, True, 4, num_samples=12))
    assert sorted(fashion_ids(images)) == list(TRAIN_IDS[:12])
    # more than the split holds would silently train on less: a configuration error
    with pytest.raises(ConfigError, match="eval_samples"):
        create_dataset("fashion_mnist", fashion, False, 8, num_samples=1000)


@pytest.mark.parametrize("num_samples", [0, 10])
def test_fashion_two_shards_partition_the_samples(fashion, num_samples):
    shards = [fashion_ids(collect(create_dataset("fashion_mnist", fashion, False, 4, num_samples=num_samples,
                                                 num_shards=2, shard_id=k))[0]) for k in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards)) == list(TEST_IDS[:num_samples or None])


def test_fashion_training_shards_share_one_permutation(fashion):
    shards = [fashion_ids(collect(create_dataset("fashion_mnist", fashion, True, 4, drop_remainder=False,
                                                 num_shards=2, shard_id=k))[0]) for k in (0, 1)]
    assert sorted(np.concatenate(shards)) == list(TRAIN_IDS)


def test_fashion_resizes_only_when_asked(fashion):
    images, _, _ = collect(create_dataset("fashion_mnist", fashion, True, 8, image_size=32))
    assert images.shape[1:] == (1, 32, 32)


def test_dataset_info():
    assert dataset_info("fashion_mnist") == {"num_classes": 10, "in_channels": 1, "image_size": 28}
    assert dataset_info("cifar10") == {"num_classes": 10, "in_channels": 3, "image_size": 32}
    assert dataset_info("imagenet") == {"num_classes": 1000, "in_channels": 3, "image_size": 224}


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FASHION), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_subset():
    images, labels, sizes = collect(create_dataset("fashion_mnist", SYSTEM_FASHION, True, 128, num_samples=256))
    assert images.shape == (256, 1, 28, 28) and sizes == [128, 128]
    assert set(labels) <= set(range(10))
    assert -1.0 < images.mean() < 1.0  # roughly standardised
    _, labels, _ = collect(create_dataset("fashion_mnist", SYSTEM_FASHION, False, 10, num_samples=10))
    np.testing.assert_array_equal(labels, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])  # the official first test labels


# ---------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("nested", [False, True])
def test_cifar_eval_decodes_channel_major_records(tmp_path, nested):
    contents = write_cifar(str(tmp_path / "cifar-10-batches-bin"))
    data_path = str(tmp_path) if nested else str(tmp_path / "cifar-10-batches-bin")
    images, labels, _ = collect(create_dataset("cifar10", data_path, False, 4))
    expected_labels, expected_images = contents["test_batch.bin"]
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected_labels)
    expected = (expected_images - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]
    np.testing.assert_allclose(images, expected, atol=1e-4)


def test_cifar_train_reads_all_five_batches(tmp_path):
    contents = write_cifar(str(tmp_path))
    images, labels, sizes = collect(create_dataset("cifar10", str(tmp_path), True, 4))
    assert images.shape == (8, 3, 32, 32) and sizes == [4, 4]
    all_labels = np.concatenate([contents[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    _, labels, _ = collect(create_dataset("cifar10", str(tmp_path), True, 4, drop_remainder=False))
    assert sorted(labels) == sorted(all_labels)
    _, labels, _ = collect(create_dataset("cifar10", str(tmp_path), False, 4, num_samples=3))
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_cifar_two_shards_partition_the_samples(tmp_path):
    write_cifar(str(tmp_path))  # test labels 0..9 identify the samples
    shards = [collect(create_dataset("cifar10", str(tmp_path), False, 4, num_shards=2, shard_id=k))[1]
              for k in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards)) == list(range(10))


# ---------------------------------------------------------------- ImageNet (ImageFolder)

def test_imagenet_eval_and_train_splits(imagenet):
    images, labels, sizes = collect(create_dataset("imagenet", imagenet, False, 4, image_size=16, eval_resize=20))
    assert images.shape == (4, 3, 16, 16) and images.dtype == np.float32 and labels.dtype == np.int32
    assert sizes == [4]  # val/ holds 2 classes x 2 images
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    images, labels, _ = collect(create_dataset("imagenet", imagenet, True, 2, image_size=16))
    assert images.shape == (6, 3, 16, 16)  # train/ holds 2 classes x 3 images
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]


def test_imagenet_accepts_class_folders_directly(imagenet):
    _, labels, _ = collect(create_dataset("imagenet", os.path.join(imagenet, "train"), False, 8, image_size=16))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])


def test_imagenet_num_samples_spreads_over_classes(imagenet):
    _, labels, _ = collect(create_dataset("imagenet", imagenet, False, 8, image_size=16, num_samples=2))
    np.testing.assert_array_equal(labels, [0, 1])


def test_imagenet_two_shards_partition_the_samples(tmp_path):
    reds = write_image_tree(str(tmp_path), per_class=3)
    shards = [imagenet_reds(collect(create_dataset("imagenet", str(tmp_path), False, 8, image_size=16,
                                                   num_shards=2, shard_id=k))[0]) for k in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3
    found = np.sort(np.concatenate(shards))
    assert np.abs(found - np.array(reds)).max() <= 4


# ---------------------------------------------------------------- errors

def error_of(*args, **kwargs):
    with pytest.raises(DataError) as info:
        create_dataset(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10", "imagenet"])
def test_nonexistent_and_empty_paths(tmp_path, dataset):
    missing = str(tmp_path / "nowhere")
    assert missing in error_of(dataset, missing, True, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in error_of(dataset, str(empty), False, 8)


def test_fashion_missing_file_is_named(tmp_path):
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((4, 28, 28)))
    message = error_of("fashion_mnist", str(tmp_path), True, 8)
    assert "train-labels-idx1-ubyte" in message and str(tmp_path) in message


@pytest.mark.parametrize("damage", ["magic", "gzip", "truncated", "count"])
def test_fashion_malformed_files(fashion, damage):
    images_path = os.path.join(fashion, "train-images-idx3-ubyte.gz")
    if damage == "magic":
        write_idx(images_path, np.zeros((40, 28, 28)), magic=2049)
    elif damage == "gzip":
        with open(images_path, "wb") as f:
            f.write(b"not gzip at all")
    elif damage == "truncated":
        with gzip.open(images_path, "rb") as f:
            payload = f.read()
        with gzip.open(images_path, "wb") as f:
            f.write(payload[:-28 * 28 * 3])
    else:
        write_idx(images_path, np.zeros((39, 28, 28)))
    message = error_of("fashion_mnist", fashion, True, 8)
    assert images_path in message
    words = {"magic": "magic number", "gzip": "cannot read", "truncated": "truncated",
             "count": "39 images"}
    assert words[damage] in message


def test_cifar_truncated_and_missing_files(tmp_path):
    write_cifar(str(tmp_path))
    truncated = str(tmp_path / "data_batch_2.bin")
    with open(truncated, "r+b") as f:
        f.truncate(3073 * 2 - 100)
    assert truncated in error_of("cifar10", str(tmp_path), True, 8)
    os.remove(str(tmp_path / "data_batch_4.bin"))
    message = error_of("cifar10", str(tmp_path), True, 8)
    assert "data_batch_4.bin" in message and str(tmp_path) in message


def test_imagenet_without_class_folders(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    assert str(tmp_path / "train") in error_of("imagenet", str(tmp_path), True, 8)
    assert "val" in error_of("imagenet", str(tmp_path), False, 8)


def test_bad_arguments(fashion):
    assert "unknown dataset" in error_of("mnist", fashion, True, 8)
    assert "shard_id" in error_of("fashion_mnist", fashion, True, 8, num_shards=2, shard_id=2)


# ---------------------------------------------------------------- scripts/get_fashion_mnist.sh

def run_script(target, system_dir):
    env = dict(os.environ, FASHION_MNIST_SYSTEM_DIR=str(system_dir), FASHION_MNIST_OFFLINE="1")
    return subprocess.run(["bash", SCRIPT, str(target)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FASHION), reason="dataset-fashion-mnist is not installed")
def test_script_copies_from_the_system_directory(tmp_path):
    target = tmp_path / "data" / "fashion_mnist"
    result = run_script(target, SYSTEM_FASHION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(target)
    assert sorted(os.listdir(target)) == sorted(os.listdir(SYSTEM_FASHION))
    # Second run: the files already in place are verified and kept, nothing else is needed.
    assert run_script(target, tmp_path / "nowhere").returncode == 0


def test_script_rejects_a_corrupt_file(tmp_path):
    target = tmp_path / "fm"
    target.mkdir()
    (target / "train-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    result = run_script(target, tmp_path / "nowhere")
    assert result.returncode != 0
    assert str(target / "train-labels-idx1-ubyte.gz") in result.stderr and "delete it" in result.stderr


def test_script_explains_what_to_do_when_nothing_is_available(tmp_path):
    result = run_script(tmp_path / "fm", tmp_path)
    assert result.returncode == 1
    assert "dataset-fashion-mnist" in result.stderr and "t10k-labels-idx1-ubyte.gz" in result.stderr


def test_more_workers_than_cores_is_capped(fashion):
    # the ImageNet recipes ask for 8 workers; MindSpore refuses more than the machine's cores
    data = create_dataset("fashion_mnist", fashion, False, 8, num_samples=16,
                          num_parallel_workers=(os.cpu_count() or 1) + 6)
    assert len(collect(data)[0]) == 16
