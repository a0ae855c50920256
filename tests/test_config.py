import json
from pathlib import Path

import pytest

from qfm_iqm.training.config import TrainConfig


def test_spec_defaults():
    config = TrainConfig(mode="qfm")
    assert (config.quality_tolerance, config.noise_strength, config.noise_weight, config.kd_weight) == (0.05, 0.3, 1.0, 1.0)
    assert (config.memory_factor, config.ema_decay) == (8, 0.999)
    assert (config.epochs, config.weight_decay, config.step_epochs, config.step_gamma) == (9, 0.05, 3, 0.1)
    assert config.use_noise and not config.distill  # the teacher is off unless asked for (validation)
    assert TrainConfig(mode="qfm", teacher="ema").distill


def test_measured_defaults_components_off_and_the_lite0_optimiser():
    config = TrainConfig()
    assert config.mode == "deiqt" and not config.use_noise and not config.distill
    assert (config.lr, config.head_lr_scale, config.schedule) == (5e-5, 10.0, "cosine")
    # chosen on validation parts (results/validation/livec-distillation): no teacher; the 4x4 test grid
    assert (config.teacher, config.eval_grid) == ("none", 4)


def test_paper_recipe_config_restores_deiqts_optimiser_and_the_full_method():
    config = TrainConfig.from_file(Path(__file__).parents[1] / "configs" / "paper_recipe.yaml")
    assert (config.mode, config.lr, config.head_lr_scale, config.schedule) == ("qfm", 2e-4, 1.0, "step")
    assert config.use_noise and config.distill


def test_deiqt_mode_turns_noise_and_distillation_off():
    config = TrainConfig(mode="deiqt")
    assert not config.use_noise and not config.distill


def test_a_teacher_in_deiqt_mode_is_refused_and_an_old_record_of_one_reads_as_none():
    with pytest.raises(ValueError, match="teacher 'ema' has no effect in mode 'deiqt'.*teacher: none"):
        TrainConfig(mode="deiqt", teacher="ema")
    recorded = {**TrainConfig(mode="deiqt").to_dict(), "teacher": "pretrained"}  # what earlier versions wrote
    assert TrainConfig.from_record(recorded) == TrainConfig(mode="deiqt")
    assert TrainConfig.from_record({**recorded, "mode": "qfm"}).teacher == "pretrained"


def test_a_benchmark_cell_in_deiqt_mode_must_not_inherit_a_teacher():
    from qfm_iqm.experiments.benchmark.config import BenchmarkConfig

    data = {"name": "b", "seeds": [0], "datasets": [{"name": "livec"}], "train": {"teacher": "ema"},
            "methods": [{"name": "qfm", "train": {"mode": "qfm"}}]}
    assert BenchmarkConfig.from_dict(data).methods[0].train_config(data["train"]).teacher == "ema"
    with pytest.raises(ValueError, match="no effect in mode 'deiqt'"):
        BenchmarkConfig.from_dict({**data, "methods": [{"name": "deiqt", "train": {"mode": "deiqt"}}]})
    with pytest.raises(ValueError, match="unknown training option.*epoch"):
        BenchmarkConfig.from_dict({**data, "train": {"epoch": 3}, "methods": [{"name": "b", "baseline": "brisque"}]})


def test_overrides_parse_numbers_and_reach_the_model():
    config = TrainConfig().with_overrides(["lr=5e-5", "epochs=3", "grad_clip=null", "model.token_gate=true"])
    assert config.lr == 5e-5 and isinstance(config.lr, float)
    assert config.epochs == 3 and config.grad_clip is None and config.model.token_gate is True


@pytest.mark.parametrize(
    "override,message",
    [("lr=abc", "must be a number"), ("epochs=2.5", "whole number"), ("nope=1", "unknown option"),
     ("lr", "key=value"), ("mode=fast", "mode must be")],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().with_overrides([override])


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("mode: deiqt\nlr: 5e-5\nmodel:\n  token_gate: true\n")
    config = TrainConfig.from_file(path)
    assert config.mode == "deiqt" and config.lr == 5e-5 and config.model.token_gate
    assert TrainConfig.from_dict(config.to_dict()) == config
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="epoch"):
        TrainConfig.from_file(tmp_path / "bad.yaml")


def test_results_folders_written_before_an_option_existed_are_reused_only_at_its_default(tmp_path):
    from qfm_iqm.experiments.protocol import check_method

    config = TrainConfig().to_dict()
    older = {key: value for key, value in config.items() if key != "rank_weight"}
    (tmp_path / "method.json").write_text(json.dumps({"config": older, "dataset": "x"}))
    check_method(tmp_path, {"config": config, "dataset": "x"})  # the option's default: the same run
    changed = TrainConfig(rank_weight=0.5).to_dict()
    with pytest.raises(ValueError, match="differs in: config"):
        check_method(tmp_path, {"config": changed, "dataset": "x"})
