import json

import pytest
import torch

from conftest import tiny_config
from qfm_iqm.inference.predict import predict_records
from qfm_iqm.experiments.protocol import fit_model
from qfm_iqm.inference.checkpoint import load_trained_model
from qfm_iqm.inference.pretrained import MODEL_FORMAT
from qfm_iqm.models.qfm import ModelConfig, build_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.trainer import Trainer, lr_factor


@pytest.mark.parametrize("mode,teacher", [("deiqt", "none"), ("qfm", "ema"), ("qfm", "pretrained")])
def test_training_writes_a_loadable_checkpoint(tmp_path, blur_records, mode, teacher):
    config = tiny_config(mode=mode, teacher=teacher, epochs=1)
    model, history, _ = fit_model(config, blur_records, tmp_path, progress=False)
    assert len(history) == 1
    loaded = load_trained_model(tmp_path)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["training"]["mode"] == mode
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).score, loaded(x).score, atol=1e-6)
    if mode == "qfm":
        assert history[0]["kd"] > 0
        assert 0 < history[0]["matched"] <= 1
    else:
        assert history[0]["kd"] == 0 and history[0]["noise"] == 0
    assert (tmp_path / "teacher" / "model.safetensors").exists() == (teacher == "pretrained")


def test_resume_with_other_options_is_refused(tmp_path, blur_records):
    Trainer(tiny_config(epochs=1), blur_records, tmp_path, progress=False).fit()
    other = Trainer(tiny_config(epochs=1, noise_strength=0.5), blur_records, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"used other options \(differs in: noise_strength\)"):
        other.fit(resume=True)


def test_resume_after_interruption_matches(tmp_path, blur_records, monkeypatch):
    config = tiny_config(epochs=2)
    straight = Trainer(config, blur_records, tmp_path / "straight", progress=False)
    straight.fit()

    run = Trainer(config, blur_records, tmp_path / "cut", progress=False)
    original = Trainer.train_epoch
    calls = {"n": 0}

    def crash_on_second_epoch(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = Trainer(config, blur_records, tmp_path / "cut", progress=False)
    resumed.fit(resume=True)
    assert resumed.epoch == 2
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert straight.history.epochs[-1]["total"] == pytest.approx(resumed.history.epochs[-1]["total"], abs=1e-6)


def test_noise_is_off_at_inference(tmp_path, blur_records):
    trainer = Trainer(tiny_config(epochs=1), blur_records, tmp_path, progress=False)
    trainer.fit()
    assert trainer.memory.size > 0
    first = predict_records(trainer.model, blur_records[:3], grid=2)
    trainer.memory.tokens.normal_()  # a perturbed memory must not change predictions
    second = predict_records(trainer.model, blur_records[:3], grid=2)
    assert (first.scores == second.scores).all()


def test_lr_schedule_warmup_then_step_decay():
    config = TrainConfig(epochs=9, warmup_epochs=1, schedule="step", step_epochs=3, step_gamma=0.1)
    assert lr_factor(0, 10, config) == pytest.approx(0.1)
    assert lr_factor(9, 10, config) == pytest.approx(1.0)
    assert lr_factor(29, 10, config) == pytest.approx(1.0)
    assert lr_factor(30, 10, config) == pytest.approx(0.1)
    assert lr_factor(60, 10, config) == pytest.approx(0.01)
    cosine = TrainConfig(epochs=9, warmup_epochs=0, schedule="cosine")
    assert lr_factor(0, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(89, 10, cosine) < 0.01


@pytest.mark.livec
def test_training_on_livec_images_lowers_the_loss(tmp_path, livec_root):
    from qfm_iqm.data.livec import load_livec

    records = load_livec(livec_root).records[:24]
    config = tiny_config(mode="deiqt", epochs=4, batch_size=8, lr=5e-4)
    _, history, _ = fit_model(config, records, tmp_path, progress=False)
    assert history[-1]["clean"] < history[0]["clean"]
    assert (tmp_path / "model.safetensors").exists()


def test_dataset_resize_rule_reaches_the_model_preprocessing(tmp_path, blur_records):
    from qfm_iqm.data.records import IQADataset, LabelScale
    from qfm_iqm.experiments.protocol import config_for_dataset

    dataset = IQADataset("big", tmp_path, blur_records, LabelScale(0, 100, True, "MOS"), False, resize_short_side=96)
    config = config_for_dataset(tiny_config(mode="deiqt", epochs=1), dataset)
    model, _, _ = fit_model(config, blur_records, tmp_path / "run", progress=False)
    assert load_trained_model(tmp_path / "run").config.preprocessing["resize_short_side"] == 96


def test_building_a_network_leaves_the_callers_config_as_it_was():
    config = ModelConfig(dim=64, num_heads=4, preprocessing={"max_short_side": 96})
    model = build_model(config, pretrained_backbone=False)
    assert config.preprocessing == {"max_short_side": 96}
    assert model.config.preprocessing == {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "max_short_side": 96}


def test_checkpoint_json_records_each_fact_once_and_nothing_machine_local(tmp_path, blur_records):
    preprocessing = {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "max_short_side": 96}
    config = tiny_config(mode="deiqt", epochs=1, freeze_backbone=True, feature_cache_dir=str(tmp_path / "cache"),
                         model={"dim": 64, "num_heads": 4, "preprocessing": preprocessing})
    fit_model(config, blur_records, tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "model.json").read_text()
    saved = json.loads(text)
    assert saved["format"] == MODEL_FORMAT and text.count('"preprocessing"') == 1 and text.count('"backbone"') == 1
    assert str(tmp_path) not in text and "feature_cache_dir" not in text and "model" not in saved["training"]
    assert saved["model"]["preprocessing"] == preprocessing
    restored = TrainConfig.from_checkpoint(saved)
    assert restored.recorded_options() == config.recorded_options() and restored.feature_cache_dir is None


def test_ema_teacher_reaches_its_configured_decay(tmp_path, blur_records):
    """The keep-rate rises over the lr warm-up and then is exactly ``ema_decay`` (0.98 at the end of
    a run was the old (1+t)/(10+t) ramp's ceiling)."""
    trainer = Trainer(tiny_config(epochs=2, warmup_epochs=1.0, ema_decay=0.999), blur_records, tmp_path, progress=False)
    steps = trainer.steps_per_epoch
    rates = [trainer.teacher.decay_at(t) for t in range(2 * steps)]
    assert rates[0] == 0 and all(a < b for a, b in zip(rates[:steps], rates[1:steps]))
    assert rates[steps:] == [0.999] * steps
    trainer.fit()
    assert trainer.teacher.decay_at(trainer.teacher.updates) == 0.999
