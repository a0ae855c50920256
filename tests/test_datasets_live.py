from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from dataset_fixtures import assert_refs_disjoint
from PIL import Image

from qfm_iqm.data.live import LIVE_FOLDERS, LIVE_N_ENTRIES, load_live
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset

N_REFS = 5


def _is_org(i: int) -> bool:
    return i % 7 == 0


def _dmos(i: int) -> float:
    return 0.0 if _is_org(i) else float((i * 37) % 100) + 0.5


def _cell_row(names: list[str]) -> np.ndarray:
    cell = np.empty((1, len(names)), dtype=object)
    cell[0, :] = names
    return cell


def make_live(root: Path, realigned: bool = False, dmos: list[float] | None = None, skip: tuple[str, ...] = ()) -> Path:
    """Miniature LIVE release 2: all 982 entries (8x8 BMPs), 5 references, every 7th entry a flagged original."""
    buf = BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="BMP")
    for folder, n in LIVE_FOLDERS:
        (root / folder).mkdir(parents=True)
        for k in range(1, n + 1):
            if f"{folder}/img{k}.bmp" not in skip:
                (root / folder / f"img{k}.bmp").write_bytes(buf.getvalue())
        (root / folder / "info.txt").write_text("ref img param\n")
    values = dmos if dmos is not None else [_dmos(i) for i in range(LIVE_N_ENTRIES)]
    orgs = np.array([[1.0 if _is_org(i) else 0.0 for i in range(LIVE_N_ENTRIES)]])
    scipy.io.savemat(root / "dmos.mat", {"dmos": np.array([values]), "orgs": orgs})
    if realigned:
        realigned_values = np.array([values]) + 1.0
        std = np.full((1, LIVE_N_ENTRIES), 7.5)
        scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": realigned_values, "orgs": orgs, "dmos_std": std})
    refs = [f"ref{i % N_REFS}.bmp" for i in range(LIVE_N_ENTRIES)]
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": _cell_row(refs)})
    return root


@pytest.fixture(scope="module")
def live_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_live(tmp_path_factory.mktemp("live") / "databaserelease2")


def test_official_layout(live_root: Path) -> None:
    raw = scipy.io.loadmat(live_root / "refnames_all.mat")["refnames_all"]
    assert raw.shape == (1, LIVE_N_ENTRIES) and raw.dtype == object
    ds = load_live(live_root)
    kept = [i for i in range(LIVE_N_ENTRIES) if not _is_org(i)]
    assert ds.name == "LIVE" and ds.synthetic and len(ds) == len(kept)
    assert ds.records[0].path == live_root / "jp2k" / "img2.bmp"  # entry 1 (img1) is a flagged original
    by_name = {f"{r.path.parent.name}/{r.path.name}": r for r in ds.records}
    assert by_name["jpeg/img1.bmp"].raw_label == _dmos(227)  # entries run through the folders in order
    assert by_name["fastfading/img174.bmp"].raw_label == _dmos(981)
    assert by_name["wn/img2.bmp"].ref_id == f"ref{(227 + 233 + 1) % N_REFS}.bmp"
    np.testing.assert_allclose(ds.raw_labels(), [_dmos(i) for i in kept])
    assert all(r.raw_std is None for r in ds.records)
    assert_refs_disjoint(ds)


def test_lower_dmos_gives_higher_label(live_root: Path) -> None:
    ds = load_live(live_root)
    best, worst = min(ds.records, key=lambda r: r.raw_label), max(ds.records, key=lambda r: r.raw_label)
    assert best.label > worst.label
    assert ds.records[0].label == pytest.approx(1 - ds.records[0].raw_label / 100)


def test_realigned_preferred_when_present(tmp_path: Path) -> None:
    root = make_live(tmp_path / "live", realigned=True)
    ds = load_live(root)
    assert ds.records[0].raw_label == _dmos(1) + 1.0 and ds.records[0].raw_std == 7.5
    original = load_dataset("live", root, dmos="original")
    assert original.records[0].raw_label == _dmos(1) and len(original) == len(ds)
    with pytest.raises(ValueError, match="option dmos"):
        load_dataset("live", root, dmos="newest")


def test_missing_image(tmp_path: Path) -> None:
    root = make_live(tmp_path / "live", skip=("gblur/img5.bmp", "wn/img4.bmp"))
    with pytest.raises(DatasetError, match=r"not found .*\(2 in total\): wn/img4\.bmp, gblur/img5\.bmp"):
        load_live(root)


def test_missing_image_of_dropped_original_is_fine(tmp_path: Path) -> None:
    root = make_live(tmp_path / "live", skip=("jp2k/img1.bmp",))
    assert len(load_live(root)) == LIVE_N_ENTRIES - len(range(0, LIVE_N_ENTRIES, 7))


def test_nan_dmos_and_extra_image_and_wrong_length(tmp_path: Path) -> None:
    values = [_dmos(i) for i in range(LIVE_N_ENTRIES)]
    values[3] = float("nan")
    root = make_live(tmp_path / "a", dmos=values)
    with pytest.raises(DatasetError, match=r"dmos\.mat: values missing \(NaN\).*jp2k/img4\.bmp \(nan\)"):
        load_live(root)
    root = make_live(tmp_path / "b")
    (root / "jp2k" / "img228.bmp").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"beyond release 2's counts.*jp2k/img228\.bmp"):
        load_live(root)
    scipy.io.savemat(root / "dmos.mat", {"dmos": np.zeros((1, 10)), "orgs": np.zeros((1, 10))})
    with pytest.raises(DatasetError, match="'dmos' has 10 entries, release 2 has 982"):
        load_live(root)
    root = make_live(tmp_path / "c")
    (root / "refnames_all.mat").unlink()
    with pytest.raises(DatasetError, match=r"metadata file missing: .*refnames_all\.mat"):
        load_live(root)
