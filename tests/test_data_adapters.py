"""Users' own image data: torchvision-style datasets, image folders on disk, CIFAR-10's files.
Everything is built in a temporary folder; nothing is downloaded and torchvision is optional."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import shiftsim as ss
from shiftsim.errors import ShiftsimError

CLASSES = ("circle", "square", "triangle")


def _write_tree(root, per_class=4, size=(8, 8), modes=("L", "RGB")):
    """root/<class>/<i>.png: class c has grey level 40 + 80 c (+ i); modes alternate."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            level = 40 + 80 * c + i
            mode = modes[i % len(modes)]
            img = Image.new(mode, size[::-1], level if mode == "L" else (level,) * 3)
            img.save(root / name / f"{i}.png")
    (root / "empty").mkdir()          # a folder without images is not a class
    (root / "notes.txt").write_text("not an image")


def test_image_folder_reads_classes_and_pixels(tmp_path):
    _write_tree(tmp_path / "train")
    _write_tree(tmp_path / "test", per_class=2)
    ds = ss.data.image_folder(tmp_path / "train", tmp_path / "test", channels=1)
    assert ds.classes == CLASSES and ds.kind == "image" and ds.input_shape == (1, 8, 8)
    assert len(ds) == 12 and ds.x_test.shape[0] == 6
    # every image is one grey level: 40 + 80 c + i over 255, so its label is readable from it
    level = (ds.x_train[:, 0, 0, 0] * 255).round().to(torch.int64)
    assert torch.equal((level - 40) // 80, ds.y_train)
    assert sorted(level.tolist()) == sorted(40 + 80 * c + i for c in range(3) for i in range(4))
    assert float(ds.x_train.std(dim=(1, 2, 3)).max()) == 0.0
    # cached per arguments; rebuilt from its source (as a worker process would)
    assert ss.data.image_folder(tmp_path / "train", tmp_path / "test", channels=1) is ds
    ss.data.adapters._CACHE.clear()
    again = ss.data.load(ds.source)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    # a scenario runs on it
    sc = ss.Scenario(ds, [ss.Phase(5), ss.Phase(5, [ss.Rotate(90)])], batch_size=4, eval_size=6)
    assert len(ss.run(sc, ss.models.cnn(channels=(4,), hidden=8)).trace) == 10


def test_image_folder_modes_sizes_and_held_out_split(tmp_path):
    _write_tree(tmp_path, per_class=5, modes=("RGB", "L"))
    # as stored: grey and colour images mixed -> ask for channels
    with pytest.raises(ShiftsimError, match=r"images differ in shape: \(3, 8, 8\) \(the first\) "
                                            r"and \(1, 8, 8\) .*pass size=\(height, width\) to "
                                            r"resize them and channels=1 or 3"):
        ss.data.image_folder(tmp_path)
    ds = ss.data.image_folder(tmp_path, channels=3, size=4, test_fraction=0.2, seed=1)
    assert ds.input_shape == (3, 4, 4) and len(ds) == 12 and ds.x_test.shape[0] == 3
    assert ds.name == tmp_path.name
    # resizing a constant image keeps its level
    level = (ds.x_train[:, :, 1, 1] * 255).round()
    assert torch.equal(level[:, 0], level[:, 2])
    sub = ss.data.image_folder(tmp_path, channels=3, train_size=6, seed=0)
    assert len(sub) + sub.x_test.shape[0] == 6


def test_image_folder_of_different_sizes_needs_size(tmp_path):
    _write_tree(tmp_path / "a", per_class=1, size=(8, 8))
    img = Image.new("L", (10, 6), 200)
    img.save(tmp_path / "a" / "circle" / "big.png")
    with pytest.raises(ShiftsimError, match=r"images differ in shape: \(1, 8, 8\) \(the first\) "
                                            r"and \(1, 6, 10\)"):
        ss.data.image_folder(tmp_path / "a")
    ds = ss.data.image_folder(tmp_path / "a", size=(6, 10), test_fraction=0.25)
    assert ds.input_shape == (1, 6, 10)


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(ShiftsimError, match=r"image folder '.*/nowhere' is not a folder"):
        ss.data.image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ShiftsimError, match=r"no images found under image folder '.*/flat': "
                                            r"expected one folder per class"):
        ss.data.image_folder(tmp_path / "flat")
    _write_tree(tmp_path / "bad", per_class=2)
    (tmp_path / "bad" / "circle" / "2.png").write_bytes(b"not a png")
    with pytest.raises(ShiftsimError, match=r"cannot read image '.*/circle/2\.png'"):
        ss.data.image_folder(tmp_path / "bad", channels=1)


class FakeVision:
    """A torchvision-style dataset: classes, len, ds[i] -> (image, label) in one format."""

    def __init__(self, n, kind, classes=("cat", "dog")):
        self.n, self.kind, self.classes = n, kind, list(classes)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        level = 10 * i
        label = i % 2
        if self.kind == "pil":
            return Image.new("RGB", (6, 5), (level, level, 255 - level)), label
        if self.kind == "uint8":  # (H, W, C), as PIL and OpenCV give
            a = np.zeros((5, 6, 3), np.uint8)
            a[..., 0], a[..., 2] = level, 255 - level
            return a, np.int64(label)
        t = torch.zeros(3, 5, 6)  # (C, H, W) floats, as torchvision's ToTensor gives
        t[0], t[2] = level / 255, 1 - level / 255
        return t, torch.tensor(label)


@pytest.mark.parametrize("kind", ["pil", "uint8", "tensor"])
def test_from_dataset_takes_pil_arrays_and_tensors(kind):
    train, test = FakeVision(10, kind), FakeVision(4, kind)
    ds = ss.data.from_dataset(train, test)
    assert ds.classes == ("cat", "dog") and ds.name == "FakeVision"
    assert ds.input_shape == (3, 5, 6) and len(ds) == 10 and ds.x_test.shape[0] == 4
    red = (ds.x_train[:, 0, 0, 0] * 255).round().to(torch.int64)
    assert red.tolist() == [10 * i for i in range(10)]
    torch.testing.assert_close(ds.x_train[:, 2, 0, 0], 1 - ds.x_train[:, 0, 0, 0])
    assert ds.y_train.tolist() == [i % 2 for i in range(10)]
    grey = ss.data.from_dataset(train, test, channels=1, size=(4, 4), classes=["c", "d"])
    assert grey.input_shape == (1, 4, 4) and grey.classes == ("c", "d")


def test_from_dataset_string_labels_and_held_out_fraction():
    class Named(FakeVision):
        def __getitem__(self, i):
            return super().__getitem__(i)[0], ["zebra", "ant", "moth"][i % 3]

    named = Named(12, "tensor")
    named.classes = None  # no class list: the names, sorted
    ds = ss.data.from_dataset(named, test_fraction=0.25, seed=0)
    assert ds.classes == ("ant", "moth", "zebra") and len(ds) == 9 and ds.x_test.shape[0] == 3


def test_from_dataset_matches_torchvisions_image_folder(tmp_path):
    """torchvision stays optional: used here only when it imports."""
    try:
        from shiftsim.integrations.avalanche.loader import _import_torchvision

        _import_torchvision()
        from torchvision.datasets import ImageFolder
    except Exception as exc:  # noqa: BLE001 - not installed, or not importable with this torch
        pytest.skip(f"torchvision unavailable: {exc}")
    _write_tree(tmp_path, per_class=3, modes=("L",))
    (tmp_path / "empty").rmdir()  # torchvision refuses a class folder without images
    ours = ss.data.image_folder(tmp_path, test_fraction=0.25, seed=3)
    theirs = ss.data.from_dataset(ImageFolder(str(tmp_path)), test_fraction=0.25, seed=3,
                                  channels=1)
    assert theirs.classes == ours.classes
    # torchvision opens every image as RGB; channels=1 takes the luminance back
    torch.testing.assert_close(theirs.x_train, ours.x_train)
    assert torch.equal(theirs.y_train, ours.y_train) and torch.equal(theirs.y_test, ours.y_test)


def _write_cifar(folder, per_batch=4, test=6):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ss.data.adapters.CIFAR10_CLASSES]}, f)


def test_cifar10_from_its_python_batches(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = ss.data.cifar10(tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds) == 20 and ds.x_test.shape[0] == 6
    assert ds.classes[:3] == ("airplane", "automobile", "bird") and ds.num_classes == 10
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # the 5th training image is the first of batch 2: channel-major 32x32 planes
    torch.testing.assert_close(ds.x_train[4], torch.from_numpy(
        raw[b"data"][0].reshape(3, 32, 32)).float() / 255)
    assert ds.y_train[4].item() == raw[b"labels"][0]
    assert ss.data.load(ds.source) is ds                     # cached, rebuildable
    sub = ss.data.cifar10(tmp_path / "cifar-10-batches-py", train_size=7, test_size=2)
    assert len(sub) == 7 and sub.x_test.shape[0] == 2
    monkeypatch.setenv("SHIFTSIM_CIFAR10", str(tmp_path))
    assert ss.data.cifar10() is ds


def test_cifar10_missing_or_damaged_files_are_explained(tmp_path):
    with pytest.raises(ShiftsimError, match=r"CIFAR-10 files not found under '.*' .*shiftsim "
                                            r"never downloads"):
        ss.data.cifar10(tmp_path)
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ShiftsimError, match=r"test_batch' is not a CIFAR-10 batch file"):
        ss.data.cifar10(tmp_path / "c")
