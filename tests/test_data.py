"""Fashion-MNIST loader: the real Debian IDX files, and clear errors for bad / missing files."""
import gzip
import struct

import numpy as np
import pytest
import torch

from torch_patsparse import data as D

needs_data = pytest.mark.skipif(not D.available(), reason=(
    f"Fashion-MNIST IDX files not found in {D.default_dir()} "
    "(install the Debian package: apt-get install dataset-fashion-mnist)"))


@needs_data
def test_real_idx_files():
    x, y = D.load_split("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))   # Fashion-MNIST is balanced
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01  # normalised with MEAN/STD
    xt, yt = D.load_split("test", limit=1000)
    assert xt.shape == (1000, 1, 28, 28) and int(yt.min()) == 0 and int(yt.max()) == 9
    raw, _ = D.load_split("test", limit=3, normalize=False)
    assert raw.dtype == torch.uint8 and int(raw.max()) <= 255 and int(raw.max()) > 100


def _write_idx(path, arr, gz=True, truncate=0):
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    body = (head + arr.astype(np.uint8).tobytes())[:len(head) + arr.size - truncate]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(body)


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    assert np.array_equal(D.read_idx(str(tmp_path / "a.gz")), arr)
    assert np.array_equal(D.read_idx(str(tmp_path / "b")), arr)
    _write_idx(tmp_path / "short", arr, gz=False, truncate=5)
    with pytest.raises(ValueError, match="expected 24 data bytes"):
        D.read_idx(str(tmp_path / "short"))
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(D.BadData, match="not an IDX file"):
        D.read_idx(str(tmp_path / "junk"))
    gz = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(gz[:len(gz) // 2])  # a truncated download
    with pytest.raises(D.BadData, match="cannot read"):
        D.read_idx(str(tmp_path / "cut.gz"))
    (tmp_path / "head").write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(D.BadData, match="truncated IDX header"):
        D.read_idx(str(tmp_path / "head"))


def test_bad_data_files_are_a_clear_cli_error(tmp_path, capsys):
    """Files that cannot be read or do not fit together: exit code 2 and the reason, no traceback."""
    from torch_patsparse import cli
    imgs = np.zeros((5, 28, 28), dtype=np.uint8)
    for split, (i, l) in D.FILES.items():
        _write_idx(tmp_path / (i + ".gz"), imgs)
        _write_idx(tmp_path / (l + ".gz"), np.zeros(4 if split == "train" else 5, dtype=np.uint8))
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert "inconsistent train files" in capsys.readouterr().err


def test_directory_with_own_copy(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    for split, (i, l) in D.FILES.items():
        _write_idx(tmp_path / (i + ".gz"), imgs)
        _write_idx(tmp_path / l, labels, gz=False)   # uncompressed works too
    x, y = D.load_split("test", str(tmp_path), normalize=False)
    assert torch.equal(x[:, 0], torch.from_numpy(imgs)) and y.tolist() == [0, 1, 2, 3, 4]
    assert D.available(str(tmp_path))


def test_missing_data_says_how_to_install(tmp_path):
    with pytest.raises(D.DataNotFound, match="apt-get install dataset-fashion-mnist"):
        D.load_split("train", str(tmp_path / "nowhere"))
    with pytest.raises(D.DataNotFound, match="apt-get install dataset-fashion-mnist"):
        D.load_split("train", str(tmp_path))           # directory exists, files do not
    assert not D.available(str(tmp_path))


def test_batches_deterministic_and_complete():
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in D.batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(3))])
    again = torch.cat([yb for _, yb in D.batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert sorted(seen.tolist()) == list(range(10)) and torch.equal(seen, again)
    assert D.num_batches(10, 4) == 3


@pytest.mark.parametrize("case,message", [("labels", "labels go up to 200"), ("size", "images are 32x32")])
def test_labels_or_images_that_are_not_fashion_mnist_are_a_clear_cli_error(tmp_path, capsys, case, message):
    """Labels beyond 0..9 ended the job in cross_entropy's IndexError; 32x32 images trained silently."""
    from torch_patsparse import cli
    imgs = np.zeros((5, 32, 32) if case == "size" else (5, 28, 28), dtype=np.uint8)
    labels = np.full(5, 200 if case == "labels" else 1, dtype=np.uint8)
    for split, (i, l) in D.FILES.items():
        _write_idx(tmp_path / (i + ".gz"), imgs)
        _write_idx(tmp_path / (l + ".gz"), labels)
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert message in capsys.readouterr().err
