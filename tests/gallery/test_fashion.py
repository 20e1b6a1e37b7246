"""The Fashion-MNIST demo set: IDX parsing, the stratified limit, PNGs and labels, idempotence.

No network: the package is faked (`FakeFashionApt` writes small generated IDX files where the
real package keeps them), and IDX files are written by the test's own encoder (`idx_bytes`).
"""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.gallery import demo
from core.gallery.demo import DemoDataError
from core.gallery.fashion import (
    FASHION_DIR,
    fashion_mnist_files,
    parse_idx,
    read_idx,
    stratified_indices,
)
from core.studio import Studio
from tests.helpers import FASHION_IDX_DIR, FASHION_NAMES, FakeFashionApt, idx_bytes


@pytest.fixture(autouse=True)
def tools_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend apt-get and dpkg exist, whatever this machine has."""
    monkeypatch.setattr(demo.shutil, "which", lambda tool: f"/usr/bin/{tool}")


# --- IDX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "type_code"),
    [
        (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), 0x08),
        (np.array([7, 0, 255], dtype=np.uint8), 0x08),
        (np.array([[-300, 2], [1000, -1]], dtype=np.int16), 0x0B),
        (np.array([1.5, -2.25], dtype=np.float32), 0x0D),
    ],
    ids=["images", "labels", "big-endian-short", "big-endian-float"],
)
def test_parse_idx_reads_back_what_was_written(array: np.ndarray, type_code: int):
    parsed = parse_idx(idx_bytes(array, type_code), "x.idx")

    assert parsed.shape == array.shape
    np.testing.assert_array_equal(parsed, array)


def test_the_header_is_read_as_the_mnist_page_lays_it_out():
    # A hand-written file: magic 00 00 08 03, dimensions 2 x 1 x 3, then six pixels.
    data = bytes.fromhex("00000803 00000002 00000001 00000003") + bytes(range(10, 16))

    parsed = parse_idx(data, "hand.idx")

    np.testing.assert_array_equal(parsed, [[[10, 11, 12]], [[13, 14, 15]]])


def test_read_idx_gunzips_by_content_not_by_name(tmp_path: Path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    zipped, plain = tmp_path / "labels.idx", tmp_path / "labels.gz"  # names swapped on purpose
    zipped.write_bytes(gzip.compress(idx_bytes(labels)))
    plain.write_bytes(idx_bytes(labels))

    np.testing.assert_array_equal(read_idx(zipped), labels)
    np.testing.assert_array_equal(read_idx(plain), labels)


GOOD = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))  # 16 header bytes + 12 pixels


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file: it starts with nothing"),
        (b"\x1f\x8b\x08\x00" + GOOD[4:], "not an IDX file: it starts with 1f8b0800"),
        (b"\x00\x00\x07\x03" + GOOD[4:], "not an IDX file"),  # no such type code
        (b"\x00\x00\x08\x00", "not an IDX file"),  # no dimensions
        (GOOD[:10], "truncated: it ends inside its 3-dimension header"),
        (GOOD[:-1], r"truncated: 27 bytes where its header \(shape \(3, 2, 2\)\) needs 28"),
        (GOOD + b"\x00", "has bytes past its data: 29 bytes"),
    ],
    ids=["empty", "gzip-magic", "type", "no-dims", "header", "data", "trailing"],
)
def test_a_corrupt_or_truncated_idx_is_a_demo_data_error(data: bytes, message: str):
    with pytest.raises(DemoDataError, match=message) as excinfo:
        parse_idx(data, "train-images-idx3-ubyte")

    assert str(excinfo.value).startswith("train-images-idx3-ubyte ")


def test_a_truncated_gzip_is_a_demo_data_error(tmp_path: Path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-12])

    with pytest.raises(DemoDataError, match=r"t10k-labels-idx1-ubyte\.gz is a damaged gzip file"):
        read_idx(path)


# --- the stratified limit ---------------------------------------------------------------------


def counts(labels: np.ndarray, chosen: np.ndarray) -> dict[int, int]:
    return dict(sorted(Counter(labels[chosen].tolist()).items()))


def test_the_limit_takes_an_equal_share_of_each_class_first_ones_first():
    labels = np.tile(np.arange(10), 7)  # 0..9, seven times: class c sits at c, c+10, c+20, …

    chosen = stratified_indices(labels, 20)

    assert chosen.tolist() == list(range(20))  # the first two of every class


def test_what_does_not_divide_goes_one_each_to_the_lowest_classes():
    labels = np.tile(np.arange(10), 7)

    assert counts(labels, stratified_indices(labels, 23)) == {
        c: 3 if c < 3 else 2 for c in range(10)
    }
    assert counts(labels, stratified_indices(labels, 7)) == {c: 1 for c in range(7)}


def test_a_small_class_gives_its_unused_share_to_the_others():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)  # class 1 holds only two

    chosen = stratified_indices(labels, 12)

    assert counts(labels, chosen) == {0: 5, 1: 2, 2: 5}
    assert chosen.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16]


def test_the_limit_is_deterministic_and_a_larger_one_keeps_the_smaller_ones_choice():
    labels = np.random.default_rng(3).integers(0, 10, 1000)

    small, large = stratified_indices(labels, 95), stratified_indices(labels, 400)

    np.testing.assert_array_equal(small, stratified_indices(labels.copy(), 95))
    assert set(small.tolist()) <= set(large.tolist())
    assert len(small) == 95 and len(large) == 400
    sizes = counts(labels, large).values()
    assert max(sizes) - min(sizes) <= 1  # every class holds at least 40 of these labels


@pytest.mark.parametrize("limit", [None, 6, 100])
def test_no_limit_or_one_past_the_size_keeps_everything(limit: int | None):
    labels = np.array([2, 0, 1, 0, 2, 1])

    assert stratified_indices(labels, limit).tolist() == [0, 1, 2, 3, 4, 5]


# --- the PNGs and their labels ------------------------------------------------------------------


def test_files_are_pngs_of_the_idx_pixels_labelled_with_the_official_names(tmp_path: Path):
    fake = FakeFashionApt(per_class=(3, 1))

    files = fashion_mnist_files(tmp_path / "demo", run=fake)

    idx_dir = tmp_path / "demo" / FASHION_DIR / "root" / FASHION_IDX_DIR
    pixels = np.concatenate(
        [read_idx(idx_dir / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")]
    )
    labels = np.concatenate(
        [read_idx(idx_dir / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")]
    )
    assert len(files) == 40
    assert Counter(files.values()) == {name: 4 for name in FASHION_NAMES}
    for number, (path, label) in enumerate(files.items()):  # data-set order, train first
        part, index = ("train", number) if number < 30 else ("t10k", number - 30)
        assert path.name == f"{part}-{index:05d}.png"
        assert label == FASHION_NAMES[labels[number]]
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), pixels[number])
    assert (tmp_path / "demo" / FASHION_DIR / "png" / "t-shirt-top").is_dir()  # not a subfolder
    assert [c[0] for c in fake.calls] == ["apt-get", "dpkg"]


def test_the_limit_picks_its_share_per_class(tmp_path: Path):
    files = fashion_mnist_files(tmp_path / "demo", limit=20, run=FakeFashionApt())

    assert Counter(files.values()) == {name: 2 for name in FASHION_NAMES}


def test_a_second_run_fetches_and_writes_nothing(tmp_path: Path):
    first = fashion_mnist_files(tmp_path / "demo", limit=20, run=FakeFashionApt())
    stamps = {path: path.stat().st_mtime_ns for path in first}
    again = FakeFashionApt()

    second = fashion_mnist_files(tmp_path / "demo", limit=20, run=again)

    assert second == first
    assert again.calls == []
    assert {path: path.stat().st_mtime_ns for path in second} == stamps
    png_dir = tmp_path / "demo" / FASHION_DIR / "png"
    assert sorted(png_dir.rglob("*")) == sorted({*first, *(p.parent for p in first)})


def test_a_damaged_unpacked_file_says_to_fetch_again(tmp_path: Path):
    fashion_mnist_files(tmp_path / "demo", limit=1, run=FakeFashionApt())
    workdir = (tmp_path / "demo" / FASHION_DIR).resolve()
    labels = workdir / "root" / FASHION_IDX_DIR / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(9, dtype=np.uint8))))  # 9, not 10

    with pytest.raises(DemoDataError) as excinfo:
        fashion_mnist_files(tmp_path / "demo", limit=1, run=FakeFashionApt())

    message = str(excinfo.value)
    assert "The t10k files do not pair up" in message
    assert f"delete {workdir} and run demo-data again" in message


@pytest.mark.parametrize("limit", [0, -5])
def test_a_limit_below_one_is_refused_before_fetching(tmp_path: Path, limit: int):
    fake = FakeFashionApt()

    with pytest.raises(DemoDataError, match="at least 1"):
        fashion_mnist_files(tmp_path / "demo", limit=limit, run=fake)

    assert fake.calls == []


# --- through the studio -------------------------------------------------------------------------


@pytest.fixture
def fetched(studio: Studio) -> Path:
    """The fake package, fetched into the studio's demo folder as `demo-data` would."""
    demo.fetch_package(
        studio.settings.demo_dir / FASHION_DIR,
        "dataset-fashion-mnist",
        FASHION_IDX_DIR,
        run=FakeFashionApt(),
    )
    return studio.settings.demo_dir / FASHION_DIR


def test_demo_data_ingests_the_class_names_as_labels_with_the_products_split(
    studio: Studio, fetched: Path
):
    report = studio.demo_data(dataset="fashion-mnist", limit=20)

    assert report.as_dict() == {"added": 20, "duplicates": 0, "rejected": []}
    records = studio.list_images()
    assert Counter(r.label for r in records) == {name: 2 for name in FASHION_NAMES}
    assert [r.label for r in studio.list_images(label="T-shirt/top")] == ["T-shirt/top"] * 2
    for record in records:
        digest = hashlib.sha256(Path(record.source).read_bytes()).hexdigest()
        assert record.id == digest
        assert record.split == ("train", "test")[int(digest[:8], 16) % 2]
        assert (record.width, record.height) == (28, 28)


def test_demo_data_twice_adds_nothing(studio: Studio, fetched: Path):
    studio.demo_data(dataset="fashion-mnist", limit=20)

    again = studio.demo_data(dataset="fashion-mnist", limit=20)

    assert again.as_dict() == {"added": 0, "duplicates": 20, "rejected": []}
    assert len(studio.list_images()) == 20


def test_a_limit_on_the_stamps_or_an_unknown_set_is_refused(studio: Studio):
    with pytest.raises(DemoDataError, match="fashion-mnist only, not to tuxpaint"):
        studio.demo_data(limit=5)
    with pytest.raises(DemoDataError, match="Unknown demo set 'mnist'; choose tuxpaint"):
        studio.demo_data(dataset="mnist")
