import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.core import PoisonlabError
from poisonlab.data import load_dataset, load_image_folder, make_synthetic
from poisonlab.data.mnist import load_arrays_pickle, read_idx
from poisonlab.experiment.victim import Victim, load_rows


def test_mnist_is_the_official_60k_10k_with_original_bytes():
    train, test = load_dataset("mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    scaled = test.x[:100] * 255
    assert (scaled - scaled.round()).abs().max() < 1e-4 and test.x.max() == 1.0


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("should-not-exist"),))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump((np.zeros(3), _Boom()), f)
    with pytest.raises(PoisonlabError, match="only numpy arrays"):
        load_arrays_pickle(evil)
    assert not (tmp_path / "should-not-exist").exists()


def test_restricted_unpickler_reads_arrays(tmp_path):
    ok = tmp_path / "ok.pkl.gz"
    with gzip.open(ok, "wb") as f:
        pickle.dump(((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),), f)
    ((x, y),) = load_arrays_pickle(ok)
    assert x.shape == (2, 3) and y.tolist() == [1, 2]


def test_fashion_mnist_missing_folder_names_the_debian_package(tmp_path):
    with pytest.raises(PoisonlabError, match="dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian dataset-fashion-mnist absent"
)
def test_fashion_mnist_from_debian():
    train, test = load_dataset("fashion-mnist")
    assert len(train) == 60000 and len(test) == 10000 and train.classes[9] == "Ankle boot"
    assert train.y.bincount().tolist() == [6000] * 10


def test_idx_reader_rejects_a_bad_header(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(PoisonlabError, match="unsigned-byte IDX"):
        read_idx(bad)
    short = tmp_path / "y.idx"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(PoisonlabError, match="header says"):
        read_idx(short)


def test_digits_and_synthetic():
    train, test = load_dataset("digits")
    assert train.shape == (1, 8, 8) and len(train) + len(test) == 1797
    a, b = make_synthetic(50, seed=3), make_synthetic(50, seed=3)
    assert (a.x == b.x).all() and not (a.x == make_synthetic(50, seed=4).x).all()
    assert 0 <= a.x.min() and a.x.max() <= 1


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(PoisonlabError, match="unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")


def _write_folder(root: Path, sizes=((6, 6),) * 3, mode="L") -> None:
    rng = np.random.default_rng(0)
    for name in ["cat", "dog"]:
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_folder_loads_classes_in_order(tmp_path):
    _write_folder(tmp_path)
    data = load_image_folder(tmp_path)
    assert data.classes == ("cat", "dog") and data.x.shape == (6, 1, 6, 6) and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    px = np.asarray(Image.open(tmp_path / "dog" / "1.png"), dtype=np.float32) / 255
    assert np.allclose(data.x[4, 0].numpy(), px)


def test_image_folder_rgb_and_train_test_split(tmp_path):
    for part in ("train", "test"):
        _write_folder(tmp_path / part, mode="RGB")
    train, test = load_dataset(f"folder:{tmp_path}")
    assert train.shape == (3, 6, 6) and len(train) == len(test) == 6


def test_image_folder_errors_name_the_file(tmp_path):
    _write_folder(tmp_path, sizes=((6, 6), (6, 6), (7, 6)))
    with pytest.raises(PoisonlabError, match=r"2\.png: size 6x7 differs"):
        load_image_folder(tmp_path)
    (tmp_path / "cat" / "2.png").unlink()
    (tmp_path / "dog" / "2.png").unlink()
    (tmp_path / "dog" / "1.png").write_bytes(b"not a png")
    with pytest.raises(PoisonlabError, match=r"dog/1\.png: not a readable image"):
        load_image_folder(tmp_path)
    (tmp_path / "bird").mkdir()
    with pytest.raises(PoisonlabError, match="class 'bird' has no images"):
        load_image_folder(tmp_path)
    with pytest.raises(PoisonlabError, match="no such folder"):
        load_image_folder(tmp_path / "missing")


def test_npz_rows_are_all_training_rows_unless_held_out(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    x = rng.integers(0, 256, (40, 5, 5, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(40) % 4)
    train, test = load_dataset(f"npz:{path}")
    assert train.shape == (3, 5, 5) and len(train) == 40 and len(test) == 0 and train.num_classes == 4
    assert torch.equal(train.x[7], torch.from_numpy(x[7]).permute(2, 0, 1).float() / 255)  # row 7 is the file's row 7
    data = load_rows(Victim(dataset=f"npz:{path}", holdout=0.2), need_test=False)
    assert len(data.train) == 32 and len(data.test) == 8 and data.files is None
    assert torch.equal(data.train.x, train.x[data.rows])  # each kept row knows its row in the file
    with pytest.raises(PoisonlabError, match="has no test part.*holdout"):
        load_rows(Victim(dataset=f"npz:{path}"))
    np.savez(path, x=x, y=np.arange(40) % 4, x_test=x[:4])
    with pytest.raises(PoisonlabError, match="x_test without y_test"):
        load_dataset(f"npz:{path}")
    np.savez(path, x=x, y=np.arange(40) % 4, x_test=x[:4, :4], y_test=np.arange(4))
    with pytest.raises(PoisonlabError, match="x_test images are"):
        load_dataset(f"npz:{path}")


def test_folder_rows_know_their_files(tmp_path):
    _write_folder(tmp_path)
    data = load_rows(Victim(dataset=f"folder:{tmp_path}"), need_test=False)
    assert len(data.test) == 0 and data.files is not None
    assert [Path(f).relative_to(tmp_path).as_posix() for f in data.files] == [
        "cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.zeros((4, 5, 5), np.float32), "y": np.array([0, 1, 2, 5]), "classes": np.array(["a", "b", "c"])},
            r"label 5 at index 3 is outside \[0, 2\]",
        ),
        (
            {
                "x": np.where(np.arange(100).reshape(4, 5, 5) == 60, np.nan, 0.5).astype(np.float32),
                "y": np.array([0, 1, 0, 1]),
            },
            "image 2 contains NaN",
        ),
        ({"x": np.full((4, 5, 5), 2.0, np.float32), "y": np.array([0, 1, 0, 1])}, r"image 0 has values in \[2, 2\]"),
        ({"x": np.zeros((4, 5, 5), np.float32)}, "missing array 'y'"),
        ({"x": np.zeros((4, 5, 5), np.float32), "y": np.array([0, 2, 0, 2])}, "class 1 .* has no images"),
        ({"x": np.zeros((4, 5), np.float32), "y": np.array([0, 1, 0, 1])}, "expected images shaped"),
        ({"x": np.zeros((4, 5, 5), np.float32), "y": np.array([0.0, 1, 0, 1])}, "non-empty 1-D integer array"),
    ],
)
def test_npz_bad_input_gets_one_line_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(PoisonlabError, match=message) as err:
        load_dataset(f"npz:{path}")
    assert "\n" not in str(err.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(PoisonlabError, match="holds Python objects"):
        load_dataset(f"npz:{path}")
    with pytest.raises(PoisonlabError, match="no such npz file"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
