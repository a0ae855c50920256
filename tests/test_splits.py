import json
import os
from pathlib import Path

import pytest

from qfm_iqm.data.records import DatasetError, ImageRecord, IQADataset, LabelScale
from qfm_iqm.data.splits import (
    Split,
    carve_validation,
    load_splits,
    make_split,
    make_splits,
    save_splits,
)

SCALE = LabelScale(0.0, 100.0, True, "MOS")


def _dataset(n: int = 50, synthetic: bool = False, n_refs: int = 10, name: str = "fake") -> IQADataset:
    records = [
        ImageRecord(
            path=Path(f"/x/{i}.png"),
            label=i / n,
            raw_label=100 * i / n,
            ref_id=f"ref{i % n_refs}" if synthetic else None,
        )
        for i in range(n)
    ]
    return IQADataset(name=name, root=Path("/x"), records=records, scale=SCALE, synthetic=synthetic)


def test_reproducible_disjoint_covering() -> None:
    ds = _dataset(50)
    a, b = make_split(ds, seed=3), make_split(ds, seed=3)
    assert a == b
    assert make_split(ds, seed=4) != a
    assert set(a.train).isdisjoint(a.test)
    assert sorted(a.train + a.test) == list(range(50))
    assert len(a.train) == 40 and len(a.test) == 10
    assert list(a.train) == sorted(a.train) and list(a.test) == sorted(a.test)


def test_make_splits_seeds() -> None:
    splits = make_splits(_dataset(30), range(5))
    assert [s.seed for s in splits] == list(range(5))
    assert len({s.test for s in splits}) == 5


def test_by_reference_for_synthetic() -> None:
    ds = _dataset(100, synthetic=True, n_refs=10)
    for seed in range(10):
        sp = make_split(ds, seed)
        train_refs = {ds.records[i].ref_id for i in sp.train}
        test_refs = {ds.records[i].ref_id for i in sp.test}
        assert train_refs.isdisjoint(test_refs)
        assert len(train_refs) == 8 and len(test_refs) == 2
        assert sorted(sp.train + sp.test) == list(range(100))


def test_synthetic_without_ref_id_rejected() -> None:
    ds = _dataset(10, synthetic=True)
    ds.records[3] = ImageRecord(path=Path("/x/3.png"), label=0.3, raw_label=30.0)
    with pytest.raises(DatasetError, match="without ref_id"):
        make_split(ds, 0)


def test_bad_fraction_and_too_small() -> None:
    with pytest.raises(ValueError):
        make_split(_dataset(10), 0, train_fraction=1.0)
    with pytest.raises(ValueError):
        make_split(_dataset(1), 0)


def test_carve_validation() -> None:
    ds = _dataset(50)
    sp = make_split(ds, 0)
    train, val = carve_validation(sp.train, 0.25, seed=1)
    assert (train, val) == carve_validation(sp.train, 0.25, seed=1)
    assert set(train) | set(val) == set(sp.train)
    assert set(train).isdisjoint(val) and set(val).isdisjoint(sp.test)
    assert len(val) == 10


def test_carve_validation_by_reference() -> None:
    ds = _dataset(100, synthetic=True, n_refs=10)
    sp = make_split(ds, 0)
    train, val = carve_validation(sp.train, 0.25, seed=2, dataset=ds)
    assert {ds.records[i].ref_id for i in train}.isdisjoint({ds.records[i].ref_id for i in val})
    assert set(train) | set(val) == set(sp.train)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    ds = _dataset(40, synthetic=True, n_refs=8)
    splits = make_splits(ds, [0, 1, 2])
    path = tmp_path / "sub" / "splits.json"
    save_splits(path, splits, ds.name, len(ds))
    assert load_splits(path, ds) == splits
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a usual file, not the temp file's 0600
    assert Split.from_dict(splits[0].to_dict()) == splits[0]


def _write(path: Path, splits: list[dict], dataset: str = "fake", n: int = 20) -> Path:
    payload = {"format": "qfm-iqm-splits", "version": 1, "dataset": dataset, "n_records": n, "splits": splits}
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"splits": [{"seed": 0, "train": [0, 1, 25], "test": [2]}]}, "outside"),
        ({"splits": [{"seed": 0, "train": [0, 1, -1], "test": [2]}]}, "outside"),
        ({"splits": [{"seed": 0, "train": [0, 1, 2], "test": [2, 3]}]}, "both"),
        ({"splits": [{"seed": 0, "train": [0, 1, 1], "test": [2]}]}, "repeats"),
        ({"splits": [{"seed": 0, "train": [0, 1.5], "test": [2]}]}, "integers"),
        ({"splits": [{"seed": 0, "train": [0, 1]}]}, "'test'"),
        ({"splits": [{"seed": 0, "train": 5, "test": [2]}]}, "must be lists"),
        ({"splits": [], "dataset": "other"}, "made for dataset 'other'"),
        ({"splits": [], "n": 21}, "with 21 records"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = _write(tmp_path / "s.json", **kwargs)
    with pytest.raises(DatasetError, match=match):
        load_splits(path, _dataset(20))


def test_load_rejects_non_json_and_wrong_format(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read"):
        load_splits(tmp_path / "a.json", _dataset(20))
    (tmp_path / "b.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DatasetError, match="not a qfm-iqm-splits"):
        load_splits(tmp_path / "b.json", _dataset(20))
    with pytest.raises(DatasetError, match="cannot read"):
        load_splits(tmp_path / "missing.json", _dataset(20))


def test_load_rejects_shared_reference(tmp_path: Path) -> None:
    ds = _dataset(20, synthetic=True, n_refs=5)  # record i has ref i % 5
    path = _write(tmp_path / "s.json", [{"seed": 0, "train": [0, 1], "test": [5]}])
    with pytest.raises(DatasetError, match="ref0"):
        load_splits(path, ds)


def test_save_rejects_invalid(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        save_splits(tmp_path / "s.json", [Split(0, (0, 1), (1, 2))], "fake", 3)
    assert not (tmp_path / "s.json").exists()


def test_label_scale_direction_and_inverse() -> None:
    dmos = LabelScale(0.0, 5.0, False, "DMOS")
    assert dmos.normalize(0.0) == 1.0 and dmos.normalize(5.0) == 0.0
    assert dmos.denormalize(dmos.normalize(1.25)) == pytest.approx(1.25)
    assert SCALE.normalize(25.0) == pytest.approx(0.25) and SCALE.denormalize(0.25) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        LabelScale(1.0, 1.0, True, "bad")
    ds = _dataset(4)
    assert ds.labels().tolist() == [0.0, 0.25, 0.5, 0.75] and ds.raw_labels().tolist() == [0.0, 25.0, 50.0, 75.0]
