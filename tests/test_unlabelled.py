"""The distillation teacher's unlabelled pool: reaches the teacher and the memory, never a held-out image."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from qfm_iqm.data.records import IQADataset, LabelScale
from qfm_iqm.data.splits import Split
from qfm_iqm.experiments import protocol
from qfm_iqm.training.trainer import Trainer


def _pool(folder, count):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)).save(folder / f"photo{k}.png")
    return folder


def test_unlabelled_views_get_pseudo_labels_and_enter_the_memory(tmp_path, blur_records, monkeypatch):
    config = tiny_config(mode="qfm", teacher="ema", kd_views=4, unlabeled_dir=str(_pool(tmp_path / "pool", 6)))
    extra = protocol.unlabelled_records(config, [])
    assert len(extra) == 6 and all(math.isnan(r.label) for r in extra)
    labelled = blur_records[:8]
    trainer = Trainer(config, labelled, tmp_path / "run", extra, progress=False)
    seen = []
    original = type(trainer.teacher).pseudo_labels
    monkeypatch.setattr(type(trainer.teacher), "pseudo_labels",
                        lambda self, x, cached=False: seen.append(len(x)) or original(self, x, cached))
    history = trainer.fit()
    assert seen and history.epochs[-1]["kd"] > 0
    stored = trainer.memory.image_ids[: trainer.memory.size]
    assert (stored >= len(labelled)).any(), "no unlabelled view reached the memory"
    assert torch.isfinite(trainer.memory.labels[: trainer.memory.size]).all()  # pseudo-labels, never NaN


def test_held_out_images_never_join_the_pool(tmp_path, blur_records, monkeypatch):
    dataset = IQADataset("fixture", tmp_path, blur_records, LabelScale(0, 100, True, "MOS"), False)
    split = Split(0, tuple(range(12)), tuple(range(12, 16)))
    pool = _pool(tmp_path / "pool", 2)
    for k in (12, 15, 0):  # two test images and a training image, linked into the pool under other names
        (pool / f"link{k}.png").symlink_to(blur_records[k].path)
    config = tiny_config(mode="qfm", teacher="ema", epochs=1, val_fraction=0.34, unlabeled_dir=str(pool))
    fit, val = protocol.validation_part(config, dataset, split)
    (pool / "val.png").symlink_to(blur_records[val[0]].path)
    received = []
    original = protocol.fit_model
    monkeypatch.setattr(protocol, "fit_model", lambda *a, **k: received.append(a[3]) or original(*a, **k))
    protocol.run_split(config, dataset, split, tmp_path / "run", progress=False)
    names = sorted(record.path.name for record in received[0])
    assert names == ["link0.png", "photo0.png", "photo1.png"]


@pytest.mark.parametrize("label_all", [False, True])
def test_labelled_views_keep_their_ground_truth_unless_the_teacher_labels_all(tmp_path, blur_records, monkeypatch,
                                                                                label_all):
    config = tiny_config(mode="qfm", teacher="ema", kd_views=4, noise=False, kd_label_all=label_all)
    trainer = Trainer(config, blur_records[:8], tmp_path, progress=False)
    monkeypatch.setattr(type(trainer.teacher), "pseudo_labels", lambda self, x, cached=False: torch.full((len(x),), 7.0))
    images, labels, ids = next(iter(trainer.loader))
    kd = next(trainer._side_batches(trainer.kd_loader))
    captured = {}
    real = trainer.forward_pass.forward
    monkeypatch.setattr(trainer.forward_pass, "forward",
                        lambda inputs, targets, ids, count, ranked=None: captured.update(targets=targets)
                        or real(inputs, targets, ids, count, ranked))
    trainer.training_step(images, labels, ids, kd)
    assert torch.equal(captured["targets"][: len(labels)], labels)  # the main batch keeps its labels either way
    expected = torch.full_like(kd[1], 7.0) if label_all else kd[1]  # the teacher's 7.0, or the ground truth
    assert torch.equal(captured["targets"][len(labels):], expected)


def test_protocol_reports_the_teachers_own_score_beside_the_students(tmp_path, blur_records):
    dataset = IQADataset("fixture", tmp_path, blur_records, LabelScale(0, 100, True, "MOS"), False)
    split = Split(0, tuple(range(12)), tuple(range(12, 16)))
    config = tiny_config(mode="qfm", teacher="pretrained", epochs=1, val_fraction=0, degradation_photos=0)
    result = protocol.run_split(config, dataset, split, tmp_path / "run", progress=False)
    assert set(result["teacher_metrics"]) == set(result["metrics"])
    assert result["teacher_metrics"]["srcc"] != result["metrics"]["srcc"] or \
        result["teacher_metrics"]["rmse"] != result["metrics"]["rmse"]
    without = protocol.run_split(tiny_config(mode="deiqt", epochs=1, val_fraction=0, degradation_photos=0),
                                 dataset, split, tmp_path / "deiqt", progress=False)
    assert "teacher_metrics" not in without


def test_a_csv_pool_gives_its_images_and_never_its_scores(tmp_path):
    pool = _pool(tmp_path / "pool", 3)
    table = tmp_path / "pool" / "scores.csv"
    table.write_text("image,mos\n" + "".join(f"photo{k}.png,{50 + k}\n" for k in range(3)))
    extra = protocol.unlabelled_records(tiny_config(unlabeled_dir=str(table)), [])
    assert sorted(r.path.name for r in extra) == ["photo0.png", "photo1.png", "photo2.png"]
    assert all(math.isnan(r.label) and math.isnan(r.raw_label) for r in extra)
    assert len(protocol.unlabelled_records(tiny_config(unlabeled_dir=str(pool)), [])) == 3


def test_a_kernel_ridge_teacher_labels_the_pool_once_and_reports_its_own_scores(tmp_path, blur_records):
    """The teacher is fitted on the training images only; the pool's views train with its labels (no NaN
    reaches a loss or the memory), and its validation and test scores are recorded beside the student's."""
    from conftest import TINY_VIT

    pool = _pool(tmp_path / "pool", 6)
    config = tiny_config(mode="qfm", teacher="kernel_ridge", teacher_backbones=[TINY_VIT, "tf_efficientnet_lite0"],
                         kd_views=4, unlabeled_dir=str(pool), epochs=1, freeze_backbone=True,
                         model={**tiny_config().model.to_dict(), "backbone": TINY_VIT})
    extra = protocol.unlabelled_records(config, [])
    trainer = Trainer(config, blur_records[:8], tmp_path / "run", extra, progress=False, val_records=blur_records[8:12])
    teacher = trainer.regression_teacher
    assert trainer.teacher is None and teacher is not None
    assert teacher.sources[TINY_VIT] is trainer.features  # the student's own cache serves its backbone
    assert teacher.sources["tf_efficientnet_lite0"].pre.input_size == 224  # Lite0 at its own crop size
    expected = teacher.predict(extra)
    assert np.isfinite(expected).all() and np.ptp(expected) > 0
    assert [r.label for r in trainer.extra_records] == pytest.approx(expected.tolist())
    refitted = type(teacher)(teacher.sources, teacher.grid).fit(blur_records[:8])  # the training images alone
    assert refitted.predict(extra) == pytest.approx(expected)
    assert trainer.kd_loader.dataset.labels[:8] == [r.label for r in blur_records[:8]]  # ground truth by default
    crossed = teacher.relabel_cross_fitted(blur_records[:8], folds=4)
    assert [r.path for r in crossed] == [r.path for r in blur_records[:8]]
    assert all(c.label != r.label for c, r in zip(crossed, blur_records[:8]))  # out-of-fold: never the label
    label_all = Trainer(replace(config, kd_label_all=True), blur_records[:8], tmp_path / "all", extra, progress=False)
    assert label_all.kd_loader.dataset.labels[:8] == [r.label for r in label_all.regression_teacher.relabel_cross_fitted(
        blur_records[:8], seed=config.seed)]
    assert label_all.loader.dataset.labels == [r.label for r in blur_records[:8]]
    history = trainer.fit()
    assert history.epochs[-1]["kd"] > 0 and "teacher_val_srcc" in history.epochs[-1]
    assert torch.isfinite(trainer.memory.labels[: trainer.memory.size]).all()
    dataset = IQADataset("fixture", tmp_path, blur_records, LabelScale(0, 100, True, "MOS"), False)
    split = Split(0, tuple(range(12)), tuple(range(12, 16)))
    result = protocol.run_split(replace(config, degradation_photos=0, val_fraction=0), dataset, split,
                                tmp_path / "split", progress=False)
    assert set(result["teacher_metrics"]) == set(result["metrics"])
