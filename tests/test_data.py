import gzip
import pickle

import numpy as np
import pytest
import torch

import shiftsim as ss
from shiftsim.errors import ShiftsimError


def test_digits_is_scaled_split_and_fixed():
    ds = ss.data.digits()
    assert ds.input_shape == (1, 8, 8) and ds.kind == "image" and ds.num_classes == 10
    assert len(ds) == 1437 and ds.x_test.shape[0] == 360
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # stratified split: every class is in both splits in proportion
    counts = ds.class_counts("test")
    assert min(counts) >= 35 and max(counts) <= 37
    # the split is fixed: a fresh build (bypassing the cache) gives identical tensors
    ss.data.loaders._CACHE.clear()
    again = ss.data.digits()
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert ds.fingerprint() == again.fingerprint()


def test_synthetic_shapes_and_difficulty():
    easy = ss.data.synthetic(n=400, dim=8, classes=4, difficulty=0.1, seed=3)
    hard = ss.data.synthetic(n=400, dim=8, classes=4, difficulty=3.0, seed=3)
    assert len(easy) == 300 and easy.x_test.shape == (100, 8)
    # nearest-centre accuracy falls with difficulty
    def nearest_centre_acc(ds):
        centres = torch.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(4)])
        pred = torch.cdist(ds.x_test, centres).argmin(1)
        return float((pred == ds.y_test).float().mean())
    assert nearest_centre_acc(easy) == 1.0
    assert nearest_centre_acc(hard) < 0.8
    assert torch.equal(ss.data.synthetic(seed=1).x_train, ss.data.synthetic(seed=1).x_train)


def test_from_tensors_holds_out_a_seeded_split_and_infers_images():
    x = torch.rand(50, 6, 6)
    y = torch.arange(50) % 5
    ds = ss.data.from_tensors(x, y, name="mine")
    assert ds.kind == "image" and ds.input_shape == (1, 6, 6)
    assert len(ds) == 40 and ds.x_test.shape[0] == 10 and ds.num_classes == 5
    again = ss.data.from_tensors(x, y)
    assert torch.equal(ds.x_test, again.x_test)
    tab = ss.data.from_numpy(np.random.rand(30, 3), np.arange(30) % 3, classes=["a", "b", "c"])
    assert tab.kind == "tabular" and tab.classes == ("a", "b", "c")


def test_dataset_moves_once_and_pickles_without_its_cache():
    ds = ss.data.synthetic(n=40, dim=3)
    assert ds.to("cpu") is ds
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.x_train, ds.x_train) and clone._moved == {}
    assert ss.data.load(ds.source).fingerprint() == ds.fingerprint()


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (20, 28, 28))
    xte = rng.integers(0, 256, (10, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte", xtr, gz)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(20) % 10, gz)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte, gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10), gz)
    ds = ss.data.fashion_mnist(root=tmp_path)
    assert ds.input_shape == (1, 28, 28) and len(ds) == 20 and ds.x_test.shape[0] == 10
    assert torch.allclose(ds.x_train[3, 0], torch.tensor(xtr[3] / 255.0, dtype=torch.float32))
    assert ds.y_train.tolist() == [i % 10 for i in range(20)]
    assert ds.classes[9] == "Ankle boot"
    sub = ss.data.fashion_mnist(root=tmp_path, train_size=5, seed=1)
    assert len(sub) == 5


def test_fashion_mnist_missing_names_the_package_and_root(tmp_path):
    with pytest.raises(ShiftsimError) as e:
        ss.data.fashion_mnist(root=tmp_path / "nothing")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and str(tmp_path / "nothing") in msg


@pytest.mark.skipif(not ss.data.loaders.Path(ss.data.FASHION_MNIST_ROOT).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed on this machine")
def test_fashion_mnist_debian_package():
    ds = ss.data.fashion_mnist(train_size=1000, test_size=200)
    assert ds.input_shape == (1, 28, 28) and len(ds) == 1000 and ds.x_test.shape[0] == 200
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0


def test_mnist1d_is_generated_offline():
    pytest.importorskip("mnist1d", reason="the mnist1d extra is not installed")
    state = np.random.get_state()[1][:5].copy()
    ds = ss.data.mnist1d(num_samples=500)
    assert ds.input_shape == (40,) and len(ds) == 400 and ds.x_test.shape[0] == 100
    assert ds.kind == "tabular"
    # the generator's global reseeding is undone
    assert np.array_equal(np.random.get_state()[1][:5], state)


def test_string_labels_become_classes_with_their_names():
    rng = np.random.default_rng(0)
    x = rng.random((60, 3), dtype=np.float32)
    names = np.array(["setosa", "versicolor", "virginica"])
    y = names[np.arange(60) % 3]
    ds = ss.data.from_numpy(x, y, test_fraction=0.25, seed=0)
    assert ds.classes == ("setosa", "versicolor", "virginica") and ds.num_classes == 3
    assert ds.y_train.dtype == torch.int64 and len(ds) == 45 and ds.x_test.shape[0] == 15
    # every sample keeps its class: the index of its name
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    assert ds.y_test.tolist() == [int(i) % 3 for i in perm[:15]]
    assert [a + b for a, b in zip(ds.class_counts("train"), ds.class_counts("test"))] == [20] * 3
    # object arrays, an explicit order, separate splits sharing one mapping
    ds2 = ss.data.from_numpy(x[:40], y[:40].astype(object), x[40:], y[40:],
                             classes=["virginica", "setosa", "versicolor"])
    assert ds2.classes == ("virginica", "setosa", "versicolor")
    assert ds2.y_train[:4].tolist() == [1, 2, 0, 1] and ds2.y_test[:3].tolist() == [2, 0, 1]
    # a name seen only in the test split is still a class; integer objects stay indices
    ds3 = ss.data.from_numpy(x[:4], np.array(["b", "a", "b", "a"]), x[4:8],
                             np.array(["c", "a", "b", "c"]))
    assert ds3.classes == ("a", "b", "c") and ds3.y_test.tolist() == [2, 0, 1, 2]
    ds4 = ss.data.from_numpy(x[:10], np.array([0, 1] * 5, dtype=object))
    assert ds4.classes == ("0", "1")
    # a run on it works and its description keeps the names
    sc = ss.Scenario(ds, [ss.Phase(5)], batch_size=8, eval_size=10)
    assert ss.run(sc, ss.models.mlp(hidden=(4,))).info["scenario"]["data"]["classes"] == \
        ["setosa", "versicolor", "virginica"]


def test_digits_default_split_is_scikit_learns_without_importing_it():
    """The stored default split equals train_test_split(stratify=y, random_state=0); the
    default dataset is built without importing scikit-learn (half a second)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, bunch.target, test_size=0.2, stratify=bunch.target,
                                          random_state=0)
    ss.data.loaders._CACHE.clear()
    ds = ss.data.digits()
    assert np.array_equal(ds.x_train.numpy(), xtr) and np.array_equal(ds.x_test.numpy(), xte)
    assert np.array_equal(ds.y_train.numpy(), ytr) and np.array_equal(ds.y_test.numpy(), yte)
    other = ss.data.digits(test_fraction=0.3, seed=1)  # any other split: scikit-learn's
    _, xte2, _, _ = train_test_split(x, bunch.target, test_size=0.3, stratify=bunch.target,
                                     random_state=1)
    assert np.array_equal(other.x_test.numpy(), xte2)
    code = ("import sys, shiftsim as ss; ss.data.digits(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
