"""Multi-stage features, the frozen-backbone cache, the noise target and the protocol's validation part."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from qfm_iqm.data.records import IQADataset, ImageRecord, LabelScale
from qfm_iqm.data.splits import Split
from qfm_iqm.experiments import protocol
from qfm_iqm.models.regressors import LITE0_STAGES, LITE2_STAGES
from qfm_iqm.inference.predict import predict_records
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.models.qfm import ModelConfig, create_model
from qfm_iqm.training.feature_cache import clear_feature_store
from qfm_iqm.training.noise import FeatureMemory
from qfm_iqm.training.trainer import Trainer, TrainingForward

MULTI_STAGE = {"multi_stage": True, "stage_grid": 2}


def _multi_stage_config(**overrides):
    config = tiny_config(**overrides)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **MULTI_STAGE))


def test_every_stage_enters_the_tokens():
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False).use_stages(3)
    assert backbone.stage_channels == [16, 24, 40, 80, 112, 192, 320, 1280] == list(LITE0_STAGES)
    lite2 = create_backbone("tf_efficientnet_lite2", pretrained=False).use_stages(3)
    assert lite2.stage_channels == list(LITE2_STAGES) and lite2.num_features == sum(LITE2_STAGES)
    x = torch.randn(2, 3, 96, 96)
    c, tokens = backbone(x)
    assert tokens.shape == (2, 9, 2064) and c.shape == (2, 2064)
    assert torch.allclose(c, tokens.mean(dim=1), atol=1e-5)
    # the first stage's block of channels is its 48x48 map averaged over 16x16 cells
    first = backbone.stage_maps(x)[0]
    assert torch.allclose(tokens[:, 0, :16], first[:, :, :16, :16].mean(dim=(2, 3)), atol=1e-5)


def test_gradients_reach_every_stage():
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, **MULTI_STAGE).train()
    model(torch.randn(2, 3, 64, 64)).score.sum().backward()
    stages = [model.backbone.model.conv_stem, *model.backbone.model.blocks, model.backbone.model.conv_head]
    for k, stage in enumerate(stages):
        grads = [p.grad for p in stage.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, f"stage {k}"
    assert model.proj_global is not None and model.proj_global.linear.weight.grad.abs().sum() > 0


def test_old_checkpoint_configs_stay_single_stage():
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("multi_stage", "stage_grid")}
    assert ModelConfig.from_dict(legacy).multi_stage is False


def test_frozen_backbone_trains_only_the_head_and_cache_equals_the_real_path(tmp_path, blur_records):
    clear_feature_store()
    config = _multi_stage_config(mode="deiqt", freeze_backbone=True, crop_bank=3, crops_per_image=2, epochs=1)
    trainer = Trainer(config, blur_records[:8], tmp_path, progress=False, val_records=blur_records[8:12])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit()
    after = trainer.model.state_dict()
    assert trainer.steps_per_epoch == 8 * 2 // config.batch_size
    backbone_keys = [k for k in after if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(before[k], after[k]) for k in backbone_keys)  # BN statistics too
    assert not torch.equal(before["proj.linear.weight"], after["proj.linear.weight"])
    assert {"val_srcc", "train_srcc", "val_rmse"} <= set(history.epochs[0])
    cached = trainer.predict(blur_records[8:12])
    real = predict_records(trainer.model, blur_records[8:12], config.eval_grid).scores
    assert cached == pytest.approx(real, abs=2e-3)  # the cache keeps tokens in float16


class _Recorder(torch.nn.Module):
    """Stands in for the model: records the decoder inputs of every ``decode`` call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.backbone, self.calls = model, model.backbone, []

    def encode_features(self, c, tokens):
        return self.model.encode_features(c, tokens)

    def decode(self, encoded):
        self.calls.append((encoded.c.detach().clone(), encoded.tokens.detach().clone()))
        return self.model.decode(encoded)


@pytest.mark.parametrize("target,perturbs_tokens,perturbs_global", [
    ("tokens", True, False), ("global", False, True), ("both", True, True),
])
def test_noise_target_chooses_what_is_perturbed(target, perturbs_tokens, perturbs_global):
    torch.manual_seed(0)
    config = tiny_config(noise_target=target, quality_tolerance=1.0)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4).eval()
    recorder = _Recorder(model)
    memory = FeatureMemory(8, token_dtype=torch.float32)
    forward = TrainingForward(recorder, memory, config)
    images, labels = torch.randn(4, 3, 64, 64), torch.full((4,), 0.5)
    forward(images, labels, torch.arange(4), 4)
    (c_clean, t_clean), (c_noisy, t_noisy) = recorder.calls
    assert (not torch.allclose(t_noisy, t_clean)) == perturbs_tokens
    assert (not torch.allclose(c_noisy, c_clean)) == perturbs_global


def _dataset(tmp_path: Path, records: list[ImageRecord], synthetic: bool) -> IQADataset:
    return IQADataset("fixture", tmp_path, records, LabelScale(0, 100, True, "MOS"), synthetic)


def test_validation_part_is_carved_from_training_part_by_reference(tmp_path, blur_records):
    records = [dataclasses.replace(r, ref_id=f"ref{i // 2}") for i, r in enumerate(blur_records)]
    dataset = _dataset(tmp_path, records, synthetic=True)
    split = Split(0, tuple(range(12)), tuple(range(12, 16)))
    fit, val = protocol.validation_part(tiny_config(val_fraction=0.34), dataset, split)
    assert set(fit) | set(val) == set(split.train) and not set(fit) & set(val)
    assert len(val) == 4  # 2 of the 6 training contents
    refs = lambda part: {records[i].ref_id for i in part}  # noqa: E731
    assert not refs(fit) & refs(val)


def test_protocol_reads_no_test_label_before_the_final_scoring(tmp_path, blur_records, monkeypatch):
    """Test labels are NaN: any use in training or validation would give NaN losses or an error."""
    test = set(range(12, 16))
    records = [dataclasses.replace(r, label=math.nan) if i in test else r for i, r in enumerate(blur_records)]
    dataset = _dataset(tmp_path, records, synthetic=False)
    split = Split(0, tuple(range(12)), tuple(sorted(test)))
    scored = []
    monkeypatch.setattr(protocol, "finish_split", lambda run_dir, ds, sp, predictions, teacher=None, **details: scored.append(details))
    protocol.run_split(tiny_config(mode="qfm", epochs=2, val_fraction=0.34), dataset, split, tmp_path / "run", progress=False)
    (details,) = scored
    assert details["val_size"] == 4 and details["fit_size"] == 8
    assert all(math.isfinite(epoch[key]) for epoch in details["history"] for key in ("total", "noise", "kd", "val_srcc"))


def test_frozen_backbone_outputs_are_kept_on_disk_for_later_runs(tmp_path, blur_records):
    from qfm_iqm.data.transforms import Preprocessing
    from qfm_iqm.training.feature_cache import FrozenBackboneFeatures

    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False).use_stages(2)
    pre = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    clear_feature_store()
    first = FrozenBackboneFeatures(backbone, pre, 2, ("lite0",), torch.device("cpu"), tmp_path / "cache")
    bank, grid = first.bank(blur_records[0]), first.grid(blur_records[0], 2)
    assert bank.shape == (2, 1 + 4, 2064) and grid.shape == (4, 1 + 4, 2064)  # c, then 2x2 tokens
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    clear_feature_store()
    later = FrozenBackboneFeatures(None, pre, 2, ("lite0",), torch.device("cpu"), tmp_path / "cache")  # no backbone
    assert torch.equal(later.bank(blur_records[0]), bank) and torch.equal(later.grid(blur_records[0], 2), grid)


@pytest.mark.parametrize("descriptor", ["every_stage", "last_stage"])
def test_the_semantic_descriptor_is_every_stage_or_the_last_stage_of_c(descriptor):
    """The matcher compares contents by c of every stage (low-level stages included) or of the last one."""
    torch.manual_seed(0)
    config = tiny_config(semantic_descriptor=descriptor)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, **MULTI_STAGE).eval()
    memory = FeatureMemory(8, token_dtype=torch.float32)
    forward = TrainingForward(model, memory, config)
    images = torch.randn(4, 3, 64, 64)
    forward(images, torch.full((4,), 0.5), torch.arange(4), 4)
    c, _ = model.backbone(images)
    last = model.backbone.stage_channels[-1]
    expected = c if descriptor == "every_stage" else c[:, -last:]
    assert memory.semantic.shape == (8, expected.shape[1])
    assert torch.allclose(memory.semantic[:4], torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)


def test_token_dropout_hides_a_share_of_the_tokens_in_training_only():
    torch.manual_seed(0)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, **MULTI_STAGE)
    model.backbone.eval()  # the same backbone outputs in both calls; only the decoder's inputs differ
    recorder = _Recorder(model)
    forward = TrainingForward(recorder, None, tiny_config(token_dropout=0.5))
    images = torch.randn(2, 3, 64, 64)
    forward(images, torch.full((2,), 0.5), torch.arange(2), 2)
    recorder.eval()
    forward(images, torch.full((2,), 0.5), torch.arange(2), 2)
    (_, trained), (_, evaluated) = recorder.calls
    assert evaluated.shape[1] == MULTI_STAGE["stage_grid"] ** 2 and trained.shape[1] == evaluated.shape[1] // 2
    assert any(torch.allclose(trained[:, 0], evaluated[:, k]) for k in range(evaluated.shape[1]))  # kept, not zeroed
