"""The maintainer scripts that feed a release: what they read and what they refuse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(folder: Path, intervals: list[dict | None]) -> Path:
    runs = [{"seed": seed, **({"interval": interval} if interval else {})} for seed, interval in enumerate(intervals)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"runs": runs}))
    return folder


def test_release_interval_is_the_median_half_width_of_the_splits(tmp_path: Path, capsys) -> None:
    quantiles = [0.20, 0.17, 0.19, 0.25, 0.18]
    cell = _cell(tmp_path / "cell", [{"coverage_target": 0.9, "quantile": q, "calibration_size": 149} for q in quantiles])
    assert _script("release_interval").main(str(cell)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"coverage": 0.9, "quantile": 0.19, "scaled": False, "calibration_size": 745}


def test_release_interval_refuses_cells_it_cannot_summarise(tmp_path: Path) -> None:
    release_interval = _script("release_interval")
    with pytest.raises(SystemExit, match="no split recorded an interval"):
        release_interval.main(str(_cell(tmp_path / "none", [None, None])))
    mixed = [{"coverage_target": c, "quantile": 0.2, "calibration_size": 10} for c in (0.9, 0.8)]
    with pytest.raises(SystemExit, match="different coverages"):
        release_interval.main(str(_cell(tmp_path / "mixed", mixed)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(4 generated 96-px JPEGs, a random tiny model (64-px crops, 2x2 grid, 0-100 scale) saved as a
    training checkpoint)."""
    import torch

    from qfm_iqm.experiments.benchmark.speed import make_jpegs
    from qfm_iqm.inference.pretrained import MODEL_FORMAT
    from qfm_iqm.models.qfm import ModelConfig, build_model
    from qfm_iqm.utils.checkpoint import save_checkpoint

    photos = tmp_path_factory.mktemp("photos")
    make_jpegs(photos, 4, 96)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=64, num_heads=4, preprocessing={"input_size": 64, "mean": [0.5] * 3,
                                                                        "std": [0.5] * 3}), pretrained_backbone=False)
    scale = {"name": "MOS", "low": 0, "high": 100, "higher_is_better": True}
    folder = tmp_path_factory.mktemp("model")
    save_checkpoint(folder, model.state_dict(), {"format": MODEL_FORMAT, "model": model.config.to_dict(),
                                                 "score_scale": scale, "training": {"eval_grid": 2}})
    return photos, folder


def test_scoring_speed_measures_network_command_ratio_memory_and_ceiling(tiny, tmp_path: Path) -> None:
    photos, model = tiny
    output = tmp_path / "speed.json"
    argv = [str(photos), str(output), "--limit", "3", "--model", str(model), "--matmul-size", "64"]
    assert _script("scoring_speed").main(argv) == 0
    result = json.loads(output.read_text())
    assert result["images"] == 3 and result["command"] == "python scripts/scoring_speed.py " + " ".join(argv)
    assert [row["runtime"] for row in result["runtimes"]] == ["onnx", "torch"]
    for row in result["runtimes"]:
        network, commands = row["network"], row["commands"]
        assert network["images"] == 3 and network["crops_per_image"] == 4 and network["images_per_second"] > 0
        assert [command["output"] for command in commands] == ["-o FILE", "table"]
        assert all(command["images"] == 3 and command["peak_rss_mib"] > 50 for command in commands)
        assert row["ratio"] == pytest.approx(commands[0]["images_per_second"] / network["images_per_second"], abs=1e-2)
    onnx, torch = ([command["peak_rss_mib"] for command in row["commands"]] for row in result["runtimes"])
    assert max(onnx) < min(torch)  # each process's own peak: the cached graph is scored without torch
    ceiling = result["flop_ceiling"]
    assert ceiling["gflop_per_image"] > 0 and ceiling["ceiling_images_per_second"] == pytest.approx(
        ceiling["matmul_gflop_per_second"] / ceiling["gflop_per_image"], rel=0.05)


def test_grid_presets_put_validation_srcc_and_speed_side_by_side(tiny, tmp_path: Path) -> None:
    photos, model = tiny
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "curves.csv").write_text(  # a sweep's rows: only each run's last epoch carries the grids
        "variant,seed,epoch,val_srcc,val_srcc_grid1,val_srcc_grid2,val_srcc_gridwhole\n"
        "recipe,0,1,0.5,,,\nrecipe,0,2,0.7,0.61,0.7,0.66\n"
        "recipe,1,1,0.6,,,\nrecipe,1,2,0.8,0.65,0.8,0.69\nrecipe,2,2,0.9,0.7,0.78,0.74\n"
    )
    output = tmp_path / "presets.json"
    argv = [str(sweep), str(photos), str(output), "--model", str(model)]
    assert _script("grid_presets").main(argv) == 0
    result = json.loads(output.read_text())
    assert result["images"] == 4 and result["command"] == "python scripts/grid_presets.py " + " ".join(argv)
    presets = result["presets"]
    assert [(p["grid"], p["crops_per_image"]) for p in presets] == [(1, 1), (2, 4), ("whole", 1)]
    assert [p["validation_srcc"]["median"] for p in presets] == [0.65, 0.78, 0.69]
    assert presets[0]["validation_srcc"]["splits"] == {"0": 0.61, "1": 0.65, "2": 0.7}
    for preset in presets[:2]:
        assert preset["command"]["options"] == ["--grid", str(preset["grid"]), "--overwrite"]
        assert preset["command"]["images_per_second"] > 0
        assert set(preset["network"]) == {"onnx", "torch"}
    assert presets[2]["command"] is None and list(presets[2]["network"]) == ["torch"]
    assert all(cell["images_per_second"] > 0 for p in presets for cell in p["network"].values())


def test_validation_sweep_runs_a_variant_on_its_own_split_seeds(tmp_path: Path, monkeypatch) -> None:
    """A variant's ``seeds`` replace the config's for it alone; finished (variant, seed) runs are not redone."""
    from types import SimpleNamespace

    sweep = _script("validation_sweep")
    trained: list[tuple[float, int]] = []
    current_seed = [None]
    dataset = SimpleNamespace(records=[SimpleNamespace(label=float(k)) for k in range(4)])

    def fit_model(config, fit, run_dir, extra, **kwargs):
        trained.append((config.rank_weight, current_seed[0]))
        return None, [{"epoch": 1, "val_srcc": 0.5, "val_plcc": 0.5, "train_srcc": 0.9}], None

    def make_split(dataset, seed):
        current_seed[0] = seed
        return SimpleNamespace(seed=seed, test=[3])

    monkeypatch.setattr(sweep, "load_dataset", lambda name, root: dataset)
    monkeypatch.setattr(sweep, "config_for_dataset", lambda config, dataset: config)
    monkeypatch.setattr(sweep, "make_split", make_split)
    monkeypatch.setattr(sweep, "validation_part", lambda config, dataset, split: ([0, 1], [2]))
    monkeypatch.setattr(sweep, "fit_model", fit_model)
    monkeypatch.setattr(sweep, "frozen_backbone_features", lambda config, model, device: None)
    monkeypatch.setattr(sweep, "plot_curves", lambda path, rows: None)
    config = tmp_path / "sweep.yaml"
    config.write_text("dataset: livec\nseeds: [0, 1]\ntrain: {degradation_photos: 0}\nvariants:\n"
                      "  - {name: a, train: {rank_weight: 0.5}}\n"
                      "  - {name: b, seeds: [0], train: {rank_weight: 1.0}}\n")
    argv = ["--config", str(config), "--output", str(tmp_path / "out")]
    assert sweep.main(argv) == 0
    assert trained == [(0.5, 0), (0.5, 1), (1.0, 0)]
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in summary[1:]] == [["a", "0 1"], ["b", "0"]]
    assert sweep.main(argv) == 0 and len(trained) == 3  # resumed: nothing left to run


def test_check_cells_adds_only_the_kinds_a_check_lacks(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from qfm_iqm.data.degradations import KINDS
    from qfm_iqm.training.config import TrainConfig

    cells = _script("degradation_check_cells")
    cell = tmp_path / "livec" / "m"
    (cell / "split_0").mkdir(parents=True)
    (cell / "split_1").mkdir()
    config = TrainConfig(mode="deiqt", teacher="none", degradation_photos=2)
    (cell / "method.json").write_text(json.dumps({"config": config.to_dict(), "dataset": "livec"}))
    kept = {"ordered": 0.5, "pairs": 12, "steps": [0.5, 0.5, 0.5], "trained": True}
    earlier = {kind: kept for kind in KINDS[1:-2]}  # a check made before the last two kinds existed,
    earlier = {"noise": kept, **earlier}  # Gaussian noise under its earlier name
    (cell / "split_0" / "result.json").write_text(json.dumps({"seed": 0, "degradation_check": earlier}))
    (cell / "split_1" / "result.json").write_text(json.dumps({"seed": 1, "degradation_check": {k: kept for k in KINDS}}))
    records = [SimpleNamespace(path=f"{k}.jpg") for k in range(6)]
    monkeypatch.setattr(cells, "load_dataset", lambda name, root: SimpleNamespace(name="livec", records=records))
    monkeypatch.setattr(cells, "load_splits", lambda path, dataset: [SimpleNamespace(seed=s, test=(0, 1, 2, 3)) for s in (0, 1)])
    monkeypatch.setattr(cells, "load_checkpoint_model", lambda run_dir, device: (run_dir, {}))
    monkeypatch.setattr(cells, "frozen_backbone_features", lambda *args: None)
    asked = []

    def check(model, photos, grid, device, kinds, features, trained_kinds):
        asked.append((model.name, tuple(kinds), len(photos)))
        return {kind: {"ordered": 1.0, "pairs": 12, "steps": [1.0, 1.0, 1.0], "trained": False} for kind in kinds}

    monkeypatch.setattr(cells, "degradation_check", check)
    assert cells.main([str(cell)]) == 0
    assert asked == [("split_0", KINDS[-2:], 2)]  # split 1's check is complete: not run
    saved = json.loads((cell / "split_0" / "result.json").read_text())["degradation_check"]
    assert list(saved) == list(KINDS) and saved[KINDS[0]] == kept and saved[KINDS[-1]]["ordered"] == 1.0


def test_colour_diffusion_noise_estimates_chroma_noise_and_adds_it_to_the_chroma_only() -> None:
    import numpy as np
    from PIL import Image

    script = _script("colour_diffusion_noise")
    flat = np.full((200, 200), 128.0)
    assert script.noise_sigma(flat) == 0.0
    noisy = flat + np.random.default_rng(0).normal(0.0, 5.0, flat.shape)
    assert script.noise_sigma(noisy) == pytest.approx(5.0, rel=0.05)  # the estimate finds the noise it is given

    ramp = np.tile(np.linspace(40, 200, 120, dtype=np.float32), (90, 1))
    image = Image.fromarray(np.stack([ramp, ramp[::-1, ::-1], np.full_like(ramp, 90)], axis=-1).astype(np.uint8))
    assert script.chroma_sigma(image) < 0.6  # smooth colours carry (almost) no chroma noise
    noised = script.with_chroma_noise(image, 4.0, seed=1)
    before, after = (np.asarray(x.convert("YCbCr"), dtype=np.float64) for x in (image, noised))
    assert np.abs(after[..., 0] - before[..., 0]).mean() < 1.0  # luma kept up to the RGB round trip
    assert script.chroma_sigma(noised) == pytest.approx(4.0, rel=0.25)
    assert np.array_equal(np.asarray(noised), np.asarray(script.with_chroma_noise(image, 4.0, seed=1)))  # seeded


def test_feature_probe_finds_a_step_the_features_carry_and_not_one_they_lack() -> None:
    import numpy as np

    probe = _script("feature_probe")
    rng = np.random.default_rng(0)
    carried = rng.normal(size=(120, 2, 60)) + np.linspace(0.2, 0.6, 60)  # two steps that move every feature a little
    absent = rng.normal(size=(120, 60))  # differences that are noise alone
    shares = probe.cross_validated(carried, [carried[:, 0], -carried[:, 1], absent], outer=5, inner=4, seed=0)["ordered"]
    assert shares[0] >= 0.95 and shares[1] <= 0.05  # read on photos it did not fit, in either direction
    assert 0.3 <= shares[2] <= 0.7
    alone = probe.cross_validated(absent[:, None], [absent], outer=5, inner=4, seed=0)["ordered"][0]
    assert 0.3 <= alone <= 0.7  # fitted to noise, it orders unseen photos at about chance
    stack = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3) ** 2  # (photos, levels, features)
    for step, difference in enumerate(probe.steps(stack), start=1):  # each level against the one before it
        assert np.array_equal(difference, stack[:, step - 1] - stack[:, step])
    assert len(probe.steps(stack)) == 3


def test_feature_probe_cache_key_follows_the_backbone_grid_and_photos() -> None:
    from types import SimpleNamespace

    import torch

    probe = _script("feature_probe")

    def stand_in(weight: float) -> SimpleNamespace:
        backbone = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(backbone.weight, weight)
        torch.nn.init.zeros_(backbone.bias)
        return SimpleNamespace(backbone=backbone, config=SimpleNamespace(preprocessing={"resize": 500}))

    key = probe.cache_key(stand_in(1.0), 3, ["a.png", "b.png"])
    assert key == probe.cache_key(stand_in(1.0), 3, ["a.png", "b.png"])
    assert len({key, probe.cache_key(stand_in(2.0), 3, ["a.png", "b.png"]), probe.cache_key(stand_in(1.0), 4, ["a.png", "b.png"]),
                probe.cache_key(stand_in(1.0), 3, ["a.png", "c.png"])}) == 4  # weights, grid, photos: each its own file


def test_damage_head_share_counts_the_photos_whose_part_moves_each_way() -> None:
    import numpy as np

    share = _script("damage_head_share")
    values = np.array([[0.0, 0.1, 0.1, 0.3], [0.0, -0.1, 0.2, 0.1]])  # two photos, a clean level and three steps
    assert share.step_shares(values, growing=True) == [0.5, 0.5, 0.5]  # a tie (0.1 -> 0.1) is not growth
    assert share.step_shares(values, growing=False) == [0.5, 0.0, 0.5]
