import numpy as np
import pytest
import torch

from sparse_transformer.data.image import ImageDataModule, SPLIT_SEED, held_out
from sparse_transformer.data.store import DataError
from tests.data.helpers import cfg, image_parquet_dir, leftovers, png_bytes, rand_images, write_idx

GREY = ["data.modality=image", "data.shape=[6,5,1]", "data.seq_len=30", "attention.stride=5", "data.batch_size=4"]
RGB = ["data.modality=image", "data.shape=[4,5,3]", "data.seq_len=60", "attention.stride=15", "data.batch_size=4"]


def _dm(tmp_path, *args):
    dm = ImageDataModule(cfg(tmp_path, *args))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(items) -> np.ndarray:
    return np.stack([items[i] for i in range(len(items))]) if len(items) else np.zeros((0, 0), np.uint8)


def test_idx_images_rebuild_exactly_with_a_fixed_held_out_validation_set(tmp_path):
    train, test = rand_images(40, 6, 5, 1, seed=1), rand_images(9, 6, 5, 1, seed=2)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train[..., 0])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test[..., 0])
    dm = _dm(tmp_path, *GREY, "data.source=local", f"data.path={tmp_path}", "data.val_size=7")
    tr, va, te = (_all(dm.splits[k]) for k in ("train", "validation", "test"))
    assert tr.dtype == np.uint8 and tr.shape == (33, 30) and va.shape == (7, 30) and te.shape == (9, 30)
    assert np.array_equal(te.reshape(9, 6, 5, 1), test)  # the test file, in order
    itr, iva, _ = held_out(40, 7, 0)
    assert np.array_equal(tr.reshape(-1, 6, 5, 1), train[itr]) and np.array_equal(va.reshape(-1, 6, 5, 1), train[iva])
    assert not set(itr) & set(iva) and len(set(itr) | set(iva)) == 40
    assert np.array_equal(dm.to_image(tr[0]), train[itr[0]])
    # the same images on a rebuild, and for another training seed
    dm2 = _dm(tmp_path / "again", *GREY, "data.source=local", f"data.path={tmp_path}", "data.val_size=7", "seed=5")
    assert np.array_equal(_all(dm2.splits["validation"]), va) and SPLIT_SEED == 1234
    x, m = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 30) and x.dtype == torch.int64 and m.all() and 0 <= int(x.min()) and int(x.max()) <= 255


def test_hub_style_rgb_images_are_raster_order_with_channels_interleaved(tmp_path):
    imgs = rand_images(30, 4, 5, 3, seed=3)
    tst = rand_images(6, 4, 5, 3, seed=4)
    src = image_parquet_dir(tmp_path / "cifar", {"train": imgs, "test": tst})
    dm = _dm(tmp_path, *RGB, f"data.source={src}", "data.val_size=5")
    te = _all(dm.splits["test"])
    assert np.array_equal(te, tst.reshape(6, -1))
    px = tst[0]
    assert list(te[0][:6]) == [*px[0, 0], *px[0, 1]]  # r, g, b of pixel (0, 0), then of pixel (0, 1)
    assert list(te[0][15:18]) == list(px[1, 0])  # row 1 starts after W*C = 15 tokens
    itr, iva, _ = held_out(30, 5, 0)
    assert np.array_equal(_all(dm.splits["validation"]), imgs[iva].reshape(5, -1))
    assert np.array_equal(_all(dm.splits["train"]), imgs[itr].reshape(25, -1))
    assert dm.shape == [4, 5, 3]


def test_max_bytes_shrinks_every_split_in_proportion(tmp_path):
    src = image_parquet_dir(tmp_path / "src", {"train": rand_images(40, 4, 5, 3), "test": rand_images(20, 4, 5, 3, seed=9)})
    dm = _dm(tmp_path, *RGB, f"data.source={src}", "data.val_size=10", "data.max_bytes=1800")  # 30 of the 60 images
    sizes = [len(dm.splits[k]) for k in ("train", "validation", "test")]
    assert sizes == [15, 5, 10] and sum(sizes) * 60 <= 1800


def test_image_folder_corrupt_file_is_named_and_nothing_is_left(tmp_path):
    d = tmp_path / "imgs" / "train"
    d.mkdir(parents=True)
    for i, im in enumerate(rand_images(6, 4, 5, 3)):
        (d / f"ok{i}.png").write_bytes(png_bytes(im))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=r"image .*broken\.png.* could not be decoded"):
        _dm(tmp_path, *RGB, "data.source=local", f"data.path={tmp_path}/imgs", "data.val_size=1", "data.splits=[0.7,0.15,0.15]")
    assert leftovers(tmp_path) == []


def test_wrong_size_image_names_the_record_and_the_size_wanted(tmp_path):
    src = image_parquet_dir(tmp_path / "src", {"train": list(rand_images(5, 4, 5, 3)) + [rand_images(1, 8, 5, 3)[0]],
                                               "test": rand_images(2, 4, 5, 3)})
    with pytest.raises(DataError) as e:
        _dm(tmp_path, *RGB, f"data.source={src}", "data.val_size=1")
    msg = str(e.value)
    assert "train[5]" in msg and "is 5x8" in msg and "needs 5x4" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []


def test_idx_of_the_wrong_shape_and_a_missing_path(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rand_images(5, 7, 7, 1)[..., 0])
    with pytest.raises(DataError, match=r"shape \[7, 7, 1\], but data.shape=\[6, 5, 1\]"):
        _dm(tmp_path, *GREY, "data.source=local", f"data.path={tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        _dm(tmp_path, *GREY, "data.source=local", f"data.path={tmp_path}/nowhere")
    assert leftovers(tmp_path) == []


def test_real_fashion_mnist_if_installed(tmp_path):
    from pathlib import Path

    p = Path("/usr/share/datasets/fashion-mnist")
    if not (p / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make data-deps)")
    dm = _dm(tmp_path, "exp=fashion_mnist", "data.max_bytes=784000")  # 1000 images
    sizes = [len(dm.splits[k]) for k in ("train", "validation", "test")]
    assert sum(sizes) <= 1000 and min(sizes) > 0 and dm.splits["test"][0].shape == (784,)


def test_raw_format_holds_the_same_images(tmp_path):
    src = image_parquet_dir(tmp_path / "src", {"train": rand_images(10, 4, 5, 3), "test": rand_images(3, 4, 5, 3, seed=7)})
    a = _dm(tmp_path / "a", *RGB, f"data.source={src}", "data.val_size=2")
    r = _dm(tmp_path / "r", *RGB, f"data.source={src}", "data.val_size=2", "data.format=raw")
    assert r.meta["format"] == "raw" and a.dir.name != r.dir.name  # data.format is part of the key: no eviction
    for k in ("train", "validation", "test"):
        assert np.array_equal(_all(a.splits[k]), _all(r.splits[k]))
