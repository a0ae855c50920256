"""The frozen backbone's cache: the same decoder inputs as the full forward pass (a ViT's CLS token as
``c``), DataLoader workers that only read it, and processes under torchrun sharing one cache folder."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config, tiny_vit_model
from qfm_iqm.data.degradations import TRAINED_KINDS
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.transforms import Preprocessing, grid_crops
from qfm_iqm.inference.predict import model_preprocessing, predict_records
from qfm_iqm.models.backbones import Backbone
from qfm_iqm.models.qfm import build_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.distributed import distributed_session
from qfm_iqm.training.feature_cache import FrozenBackboneFeatures, clear_feature_store
from qfm_iqm.training.trainer import Trainer

WORLD = 2


def frozen_vit_config(**overrides) -> TrainConfig:
    return tiny_config(**{"mode": "deiqt", "freeze_backbone": True, "crop_bank": 2, "model": tiny_vit_model(), **overrides})


def test_cached_and_eager_paths_give_the_decoder_the_same_c(tmp_path: Path, blur_records: list[ImageRecord]) -> None:
    """With a frozen ViT the cache keeps the CLS token as ``c``, as the full forward pass uses it, so a
    checkpoint scores what the protocol (scoring from the cache) reported; the mean of the patch tokens
    would not."""
    clear_feature_store()
    trainer = Trainer(frozen_vit_config(epochs=1), blur_records[:8], tmp_path, progress=False)
    model = trainer.model.eval()
    record = blur_records[8]
    cached = trainer.features.grid(record, 2).float()
    with torch.no_grad():
        c, tokens = model.backbone(grid_crops(load_image(record.path), model_preprocessing(model), 2))
    torch.testing.assert_close(cached[:, 0], c, atol=2e-3, rtol=2e-3)  # float16 storage
    torch.testing.assert_close(cached[:, 1:], tokens, atol=2e-3, rtol=2e-3)
    records = blur_records[8:]
    eager = predict_records(model, records, grid=2)
    from_cache = predict_records(model, records, grid=2, features=trainer.features)
    np.testing.assert_allclose(from_cache.scores, eager.scores, atol=1e-3)
    np.testing.assert_allclose(from_cache.spreads, eager.spreads, atol=1e-3)

    @torch.no_grad()
    def score_with_mean_c(outputs: torch.Tensor) -> float:  # what the cached path fed the decoder before
        encoded = model.encode_features(outputs[:, 1:].mean(dim=1), outputs[:, 1:])
        return model.decode(encoded).score.mean().item()

    mean_c = [score_with_mean_c(trainer.features.grid(r, 2).float()) for r in records]
    assert np.abs(np.array(mean_c) - eager.scores).max() > 1e-2


def test_dataloader_workers_read_the_cache_and_never_run_the_backbone(
    tmp_path: Path, blur_records: list[ImageRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training views, teacher-labelled views and degradation pairs come from outputs computed up front
    in the main process; workers (forked anew every epoch) train exactly like no workers."""
    main_process = os.getpid()
    forward = Backbone.forward

    def main_process_only(self: Backbone, x: torch.Tensor):
        if os.getpid() != main_process:
            raise RuntimeError("the frozen backbone ran in a DataLoader worker")
        return forward(self, x)

    monkeypatch.setattr(Backbone, "forward", main_process_only)
    histories = []
    for workers in (0, 2):
        clear_feature_store()
        cache = tmp_path / f"cache{workers}"
        config = frozen_vit_config(mode="qfm", teacher="ema", rank_weight=1.0, rank_pairs=2, num_workers=workers,
                                   feature_cache_dir=str(cache))
        histories.append(Trainer(config, blur_records, tmp_path / f"run{workers}", progress=False).fit().epochs)
        assert len(list(cache.glob("*.npy"))) == 2 * 16 and not list(cache.glob("*partial*"))  # banks and stacks
    keys = ("total", "clean", "noise", "kd", "rank", "matched")
    assert [[epoch[k] for k in keys] for epoch in histories[1]] == [[epoch[k] for k in keys] for epoch in histories[0]]
    assert histories[0][-1]["noise"] > 0 and histories[0][-1]["rank"] > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shared_cache_worker(rank: int, port: int, records: list[ImageRecord], out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed_session("cpu"):
        torch.manual_seed(0)
        model = build_model(frozen_vit_config().model, pretrained_backbone=False)
        features = FrozenBackboneFeatures(model.backbone, Preprocessing(64, (0.5,) * 3, (0.5,) * 3), 2, ("tiny-vit",),
                                          torch.device("cpu"), out / "cache")
        computed = []
        encode = features._encode
        features._encode = lambda crops: computed.append(len(crops)) or encode(crops)
        banks = features.banks(records)
        stacks = features.degraded_stacks(records[:3], TRAINED_KINDS)
        after_training_sets = len(computed)
        scores = predict_records(model, records, grid=2, features=features).scores
        report = {"computed": after_training_sets, "grid_computed": len(computed) - after_training_sets,
                  "banks": [b.double().sum().item() for b in banks],
                  "stacks": [s[range(3)].double().sum().item() for s in stacks], "scores": scores.tolist()}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def test_processes_under_torchrun_share_one_cache_folder(tmp_path: Path, blur_records: list[ImageRecord]) -> None:
    """Each cache file is computed by one process, written whole (no shared partial file), and read by
    both; validation scoring is shared out too, and both processes return every score."""
    records = blur_records[:7]
    mp.spawn(_shared_cache_worker, args=(_free_port(), records, tmp_path), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["computed"] for r in reports] == [4 + 2, 3 + 1]  # 7 banks and 3 stacks, split between the ranks
    assert [r["grid_computed"] for r in reports] == [4, 3]  # each rank scores (and caches) its share of the 7 images
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 7 + 3 + 7 and not list((tmp_path / "cache").glob("*partial*"))
    clear_feature_store()
    torch.manual_seed(0)
    model = build_model(frozen_vit_config().model, pretrained_backbone=False)
    alone = FrozenBackboneFeatures(model.backbone, Preprocessing(64, (0.5,) * 3, (0.5,) * 3), 2, ("tiny-vit",),
                                   torch.device("cpu"))  # no cache folder: computed here
    expected_scores = predict_records(model, records, grid=2, features=alone).scores
    for report in reports:
        assert report["banks"] == pytest.approx([b.double().sum().item() for b in alone.banks(records)], abs=1e-3)
        assert report["stacks"] == pytest.approx([s[range(3)].double().sum().item() for s in alone.degraded_stacks(records[:3], TRAINED_KINDS)], abs=1e-3)
        np.testing.assert_allclose(report["scores"], expected_scores, atol=1e-6)
