from pathlib import Path

import numpy as np
import pytest
import scipy.io
from dataset_fixtures import LIVEC_TEST_IMAGES as N_TEST
from dataset_fixtures import make_livec

from qfm_iqm.data.images import load_image
from qfm_iqm.data.livec import load_livec
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset

def test_official_format_roundtrip(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec")
    raw = scipy.io.loadmat(root / "Data" / "AllImages_release.mat")["AllImages_release"]
    assert raw.shape == (13, 1) and raw.dtype == object  # what the official file looks like
    ds = load_livec(root)
    assert ds.name == "LIVEC" and not ds.synthetic and len(ds) == N_TEST
    assert [r.path.name for r in ds.records] == [f"{100 + i}.bmp" for i in range(N_TEST)]
    assert all(r.path.parent == root / "Images" and r.ref_id is None for r in ds.records)
    expected_mos = [10.0 * (i % 10) + 5 for i in range(7, 13)]
    np.testing.assert_allclose(ds.raw_labels(), expected_mos)
    np.testing.assert_allclose(ds.labels(), np.array(expected_mos) / 100)
    assert [r.raw_std for r in ds.records] == [15.0 + i for i in range(7, 13)]
    assert ds.scale.higher_is_better and ds.scale.denormalize(ds.records[0].label) == pytest.approx(75.0)
    assert load_image(ds.records[0].path).size == (6, 5)


def test_image_in_training_folder_and_case_fallback(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec")
    (root / "Images" / "101.bmp").rename(root / "Images" / "trainingImages" / "101.bmp")
    (root / "Images" / "102.bmp").rename(root / "Images" / "102.BMP")
    ds = load_livec(root)
    assert ds.records[1].path == root / "Images" / "trainingImages" / "101.bmp"
    assert ds.records[2].path == root / "Images" / "102.BMP"


def test_missing_image_named(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec", skip_files=("103.bmp", "105.bmp"))
    with pytest.raises(DatasetError, match=r"\(2 in total\): 103\.bmp, 105\.bmp"):
        load_livec(root)


def test_dropped_training_images_need_not_exist(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec", skip_files=tuple(f"t{i}.bmp" for i in range(1, 8)))
    assert len(load_livec(root)) == N_TEST


def test_nan_mos(tmp_path: Path) -> None:
    mos = [50.0] * 13
    mos[9] = float("nan")
    with pytest.raises(DatasetError, match=r"AllMOS_release\.mat.*102\.bmp \(nan\)"):
        load_livec(make_livec(tmp_path / "livec", mos=mos))


def test_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="13 names, 12 MOS, 13 std"):
        load_livec(make_livec(tmp_path / "livec", mos=[50.0] * 12))


def test_duplicate_names(tmp_path: Path) -> None:
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["100.bmp", "101.bmp", "100.bmp"]
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): 100\.bmp"):
        load_livec(make_livec(tmp_path / "livec", names=names))


def test_missing_data_file(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec")
    (root / "Data" / "AllStdDev_release.mat").unlink()
    with pytest.raises(DatasetError, match="AllStdDev_release.mat"):
        load_livec(root)
    with pytest.raises(DatasetError, match="root folder not found"):
        load_livec(tmp_path / "nowhere")


def test_wrong_variable_name(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec")
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"mos": np.zeros((1, 13))})
    with pytest.raises(DatasetError, match="no variable 'AllMOS_release'"):
        load_livec(root)


def test_root_from_variable_then_datasets_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QFM_IQM_LIVEC_ROOT", raising=False)
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("livec")
    for hint in ("--data-root", "QFM_IQM_LIVEC_ROOT", str(tmp_path / "datasets" / "livec"), "AllMOS_release.mat"):
        assert hint in str(error.value)
    make_livec(tmp_path / "datasets" / "livec")
    assert load_dataset("livec").root == Path("datasets/livec")
    monkeypatch.setenv("QFM_IQM_LIVEC_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"elsewhere \(\$QFM_IQM_LIVEC_ROOT\) does not exist"):
        load_dataset("livec")
    make_livec(tmp_path / "elsewhere")
    assert load_dataset("livec").root == tmp_path / "elsewhere"


def test_registered_for_load_dataset(tmp_path: Path) -> None:
    root = make_livec(tmp_path / "livec")
    assert len(load_dataset("livec", root)) == N_TEST


@pytest.mark.livec
def test_real_livec_copy(livec_root: Path) -> None:  # the fixture skips when there is no copy
    ds = load_livec(livec_root)
    assert len(ds) in (930, 1162)  # project copy (232 withheld) or full official release
    raw = ds.raw_labels()
    assert raw.min() >= 0 and raw.max() <= 100
    assert all(r.path.is_file() for r in ds.records)
    assert not any(r.path.name.startswith("t") for r in ds.records)
    assert len({r.path for r in ds.records}) == len(ds)
