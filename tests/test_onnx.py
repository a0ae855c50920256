"""The onnx runtime: exported graphs score as the eager model does, are cached, and are checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qfm_iqm.inference import runtime
from qfm_iqm.api import Scorer, load_model, to_rgb_image
from qfm_iqm.experiments.benchmark.config import BenchmarkConfig, SpeedSpec
from qfm_iqm.experiments.benchmark.report import markdown_tables
from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome
from qfm_iqm.experiments.benchmark.speed import run_speed
from qfm_iqm.cli.main import main
from qfm_iqm.inference.predict import score_crops
from qfm_iqm.inference.graph import load_graph_scorer
from qfm_iqm.inference.pretrained import DEFAULT_MODEL, resolve_model
from qfm_iqm.models.qfm import QFMIQM, ModelConfig, build_model
from qfm_iqm.inference.runtime import cache_dir, graph_key, resolve_runtime

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CACHED_MODEL = "qfm-iqm-lite0-livec-v2"  # a release that ships no graph: exported into the cache on first use
INSTALL_HINT = "pip install onnxruntime onnx onnxscript"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Iterator[Path]:
    """Skip without the onnx extra; else a graph cache of this module's own (``$QFM_IQM_CACHE``)."""
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("qfm_iqm_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QFM_IQM_CACHE", str(root))
        yield root / "onnx"


@pytest.fixture(scope="module")
def released(cache: Path) -> tuple[Scorer, Scorer]:
    """A released model that ships no graph in both runtimes (its graph exported into ``cache``)."""
    return load_model(CACHED_MODEL, runtime="torch"), load_model(CACHED_MODEL, runtime="onnx")


def _tiny_model(seed: int, damage_head: bool = False) -> QFMIQM:
    """A randomly initialised multi-stage model on 64-px crops (stages pooled up and down to 7x7)."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=64, num_heads=4, multi_stage=True, damage_head=damage_head,
                         preprocessing={"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3})
    return build_model(config, pretrained_backbone=False).eval()


@pytest.fixture(scope="module")
def tiny(cache: Path) -> tuple[Scorer, Scorer]:
    """A tiny multi-stage model, BatchNorms not folded, in both runtimes (one model object)."""
    model = _tiny_model(0)
    return Scorer(model), Scorer(model, runtime="onnx")


def _images() -> list[np.ndarray]:
    """Three photo-like random images of different sizes (smooth colour fields plus noise)."""
    rng = np.random.default_rng(0)
    images = []
    for width, height in ((300, 260), (224, 224), (500, 375)):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        images.append(np.clip(np.asarray(coarse) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8))
    return images


def _refuse_export(model: QFMIQM, path: Path) -> Path:
    raise AssertionError("exported again")


def test_the_released_model_scores_as_in_pytorch(released: tuple[Scorer, Scorer]) -> None:
    eager, exported = released
    assert (eager.runtime, exported.runtime) == ("torch", "onnx")
    for image in _images():
        expected, result = eager.score(image), exported.score(image)
        assert result.score == pytest.approx(expected.score, abs=1e-3)  # MOS 0-100: 1e-5 normalised
        assert result.uncertainty == pytest.approx(expected.uncertainty, abs=1e-3)


def test_a_tiny_multi_stage_model_scores_as_in_pytorch(tiny: tuple[Scorer, Scorer]) -> None:
    eager, exported = tiny
    for image in _images():
        crops = eager.crops(to_rgb_image(image)[0])
        for batch in (crops, crops[:1]):  # any number of crops
            assert score_crops(exported.network, batch) == pytest.approx(score_crops(eager.network, batch), abs=1e-5)
    image = _images()[0]
    assert np.array_equal(exported.quality_map(image), eager.quality_map(image))  # maps come from the eager model


def test_a_model_with_a_damage_head_scores_as_in_pytorch(cache: Path) -> None:
    model = _tiny_model(1, damage_head=True)
    eager, exported = Scorer(model), Scorer(model, runtime="onnx")
    crops = eager.crops(to_rgb_image(_images()[2])[0])
    with torch.no_grad():
        assert (model(torch.as_tensor(crops)).damage > 0).all()  # the penalty is in the graph's scores
    assert score_crops(exported.network, crops) == pytest.approx(score_crops(eager.network, crops), abs=1e-5)


def test_crops_run_in_chunks_score_as_in_one_call(tiny: tuple[Scorer, Scorer]) -> None:
    """The graph runs a batch a few crops at a time (to bound memory); the scores do not depend on it."""
    eager, exported = tiny
    crops = torch.cat([eager.crops(to_rgb_image(image)[0]) for image in _images()])  # 27 crops
    whole = runtime.OnnxNetwork(exported.network.path, threads=1, chunk=len(crops))(crops).member_scores
    for chunk in (1, 4, runtime.CHUNK_CROPS):
        chunked = runtime.OnnxNetwork(exported.network.path, threads=1, chunk=chunk)(crops).member_scores
        assert chunked.shape == whole.shape and torch.allclose(chunked, whole, atol=1e-6)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        runtime.OnnxNetwork(exported.network.path, chunk=0)


def test_a_cached_graph_is_reused_and_is_the_default_on_a_cpu(
    released: tuple[Scorer, Scorer], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "export_onnx", _refuse_export)
    assert released[1].network.path.parent == cache_dir()
    assert load_model(CACHED_MODEL, runtime="onnx").network.path == released[1].network.path
    default = load_model(CACHED_MODEL)  # runtime "auto": onnx, as the extra is installed
    assert default.runtime == "onnx" and default.network.path == released[1].network.path


def test_a_remembered_checkpoint_scores_without_building_its_model(released: tuple[Scorer, Scorer]) -> None:
    """A fresh process serves the released model from its cached graph: the same score and range, with
    neither timm nor torchvision imported; the eager model is built only when a quality map asks for it."""
    code = (f"import json, sys; from qfm_iqm import load_model; scorer = load_model({CACHED_MODEL!r}, runtime='onnx'); "
            "result = scorer.score(sys.argv[1]); light = [name in sys.modules for name in ('timm', 'torchvision')]; "
            "scorer.quality_map(sys.argv[1]); print(json.dumps([result.score, result.low, result.high, light, "
            "'timm' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "sharp.jpg")], capture_output=True, text=True,
                          env=dict(os.environ), check=True)
    score, low, high, light, timm_for_the_map = json.loads(done.stdout.strip().splitlines()[-1])
    expected = released[0].score(EXAMPLES / "sharp.jpg")
    assert score == pytest.approx(expected.score, abs=1e-3)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-3)
    assert light == [False, False] and timm_for_the_map


def test_a_cached_graph_scores_as_the_onnx_runtime_does_without_torch(released: tuple[Scorer, Scorer]) -> None:
    """``GraphScorer`` (what ``qfm-iqm score`` uses) cuts the same crops and gives the same results, also
    for several images in one call of the graph."""
    graph = load_graph_scorer(CACHED_MODEL, threads=1)
    assert graph.network.path == released[1].network.path and graph.grid == released[1].grid == 3
    images = [to_rgb_image(image)[0] for image in _images()]
    assert np.array_equal(graph.crops(images[0]), released[1].crops(images[0]).numpy())
    results = graph.score_crop_stacks([graph.crops(image) for image in images], ["a", "b", "c"])
    for image, result, path in zip(images, results, "abc"):
        expected = released[1].score(image)
        assert result.path == path and result.score == pytest.approx(expected.score, abs=1e-3)
        assert (result.low, result.high, result.uncertainty) == pytest.approx(
            (expected.low, expected.high, expected.uncertainty), abs=1e-3)


def test_the_score_command_scores_a_cached_graph_without_torch(released: tuple[Scorer, Scorer], tmp_path: Path) -> None:
    code = ("import json, sys; from qfm_iqm.cli.main import main; status = main(sys.argv[1:]); "
            "print(json.dumps([status, sorted({'torch', 'timm', 'torchvision'} & set(sys.modules))]))")
    output = tmp_path / "scores.json"
    for options in ([], ["-o", str(output)]):
        done = subprocess.run([sys.executable, "-c", code, "--quiet", "score", str(EXAMPLES), "--model", CACHED_MODEL,
                               *options],
                              capture_output=True, text=True, env=dict(os.environ), check=True)
        assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []], done.stderr
    rows = json.loads(output.read_text())
    assert len(rows) == 5
    for row in rows:
        expected = released[1].score(row["path"])
        assert row["score"] == pytest.approx(expected.score, abs=1e-3) and row["low"] == pytest.approx(expected.low, abs=1e-3)


def test_the_first_export_of_a_model_says_so(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _tiny_model(2)
    Scorer(model, runtime="onnx")
    assert "exporting the model to ONNX for onnxruntime, once" in capsys.readouterr().err
    Scorer(model, runtime="onnx")  # its graph is cached now
    assert "exporting" not in capsys.readouterr().err


def test_only_the_very_same_checkpoint_files_are_served_from_the_cache(
    released: tuple[Scorer, Scorer], tmp_path: Path
) -> None:
    source = resolve_model(CACHED_MODEL)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(source, copy)
    shutil.copy(source.with_suffix(".json"), copy.with_suffix(".json"))
    served = runtime.cached_checkpoint_network(runtime.checkpoint_key(copy))
    assert served.path == released[1].network.path  # same bytes, same graph
    edited = json.loads(copy.with_suffix(".json").read_text())
    edited["command"] = "edited"
    copy.with_suffix(".json").write_text(json.dumps(edited))
    assert runtime.cached_checkpoint_network(runtime.checkpoint_key(copy)) is None


@pytest.mark.parametrize("damage", ["unreadable", "other probe scores"])
def test_a_damaged_checkpoint_entry_falls_back_to_the_model(
    released: tuple[Scorer, Scorer], damage: str
) -> None:
    index = runtime.cache_dir() / f"checkpoint-{runtime.checkpoint_key(resolve_model(CACHED_MODEL))}.json"
    entry = json.loads(index.read_text())
    if damage == "unreadable":
        index.write_text("{not json")
    else:
        index.write_text(json.dumps({**entry, "probe": (np.asarray(entry["probe"]) + 0.01).tolist()}))
    with pytest.warns(UserWarning, match="building the model"):
        scorer = load_model(CACHED_MODEL, runtime="onnx")
    assert scorer._model is not None and scorer.network.path == released[1].network.path
    assert json.loads(index.read_text()) == entry  # written again, from the model
    image = _images()[0]
    assert scorer.score(image).score == pytest.approx(released[0].score(image).score, abs=1e-3)


def test_a_damaged_cached_graph_is_exported_again(tiny: tuple[Scorer, Scorer]) -> None:
    eager, exported = tiny
    path = exported.network.path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match="unusable"):
        again = Scorer(eager.model, runtime="onnx")
    assert again.network.path == path
    crops = eager.crops(to_rgb_image(_images()[0])[0])
    assert score_crops(again.network, crops) == pytest.approx(score_crops(eager.network, crops), abs=1e-5)


def test_a_cached_graph_that_scores_otherwise_is_exported_again(
    tiny: tuple[Scorer, Scorer], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _tiny_model(1)  # same architecture, other weights: the graph loads and runs, with other scores
    shutil.copy(tiny[1].network.path, cache / f"{graph_key(other)}.onnx")
    monkeypatch.setattr(runtime, "export_onnx", _refuse_export)
    with pytest.warns(UserWarning, match="differ from PyTorch's"), pytest.raises(AssertionError, match="exported again"):
        Scorer(other, runtime="onnx")


def test_the_score_command_scores_alike_in_both_runtimes(released: tuple[Scorer, Scorer], tmp_path: Path) -> None:
    rows = {}
    for name in ("torch", "onnx"):
        output = tmp_path / f"{name}.json"
        assert main(["--quiet", "score", str(EXAMPLES), "--model", CACHED_MODEL, "--runtime", name, "-o", str(output)]) == 0
        rows[name] = json.loads(output.read_text())
    assert [row["path"] for row in rows["onnx"]] == [row["path"] for row in rows["torch"]] and len(rows["torch"]) == 5
    for expected, row in zip(rows["torch"], rows["onnx"]):
        assert row["score"] == pytest.approx(expected["score"], abs=1e-3)
        assert row["uncertainty"] == pytest.approx(expected["uncertainty"], abs=1e-3)


def test_without_the_onnx_extra_the_error_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=INSTALL_HINT):
        load_model(runtime="onnx")
    assert load_model(runtime="auto").runtime == "torch" and load_model().runtime == "torch"
    assert main(["--quiet", "score", str(EXAMPLES / "sharp.jpg"), "--runtime", "onnx"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_runtime_choice() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime("onnx", torch.device("cuda"))
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt", torch.device("cpu"))


def test_speed_cells_measure_both_runtimes(released: tuple[Scorer, Scorer]) -> None:
    spec = SpeedSpec(models=(CACHED_MODEL,), score_batch_sizes=(2,), score_runtimes=("torch", "onnx"),
                     train_batch_sizes=(), score_images=2, image_size=64)
    cells = run_speed(spec)  # in processes of their own, which find the graph ``released`` exported
    assert [(cell["kind"], cell["runtime"]) for cell in cells] == [
        ("scoring", "torch"), ("onnx-export", "onnx"), ("scoring", "onnx")
    ], cells
    assert not cells[1]["exported"] and cells[1]["seconds"] > 0
    assert all(cell["images_per_second"] > 0 and cell["peak_rss_mib"] > 50 for cell in (cells[0], cells[2]))
    table = markdown_tables(BenchmarkConfig("speed", (0,), (), ()), BenchmarkOutcome(speed=cells))
    assert f"| onnx-export | {CACHED_MODEL} | onnx | - | " in table and " s to load the graph |" in table
    assert f"| scoring | {CACHED_MODEL} | onnx | 2 | " in table


def test_the_default_release_ships_its_graph_and_exports_nothing(
    released: tuple[Scorer, Scorer], cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default model's graph comes with the package: its first use scores at once, with neither an
    export nor a file in the cache, and as the eager model does; the score command then imports no torch."""
    monkeypatch.setattr(runtime, "export_onnx", _refuse_export)
    weights = resolve_model(DEFAULT_MODEL)
    before = sorted(cache.iterdir()) if cache.is_dir() else []
    shipped, eager = load_model(runtime="onnx"), load_model(runtime="torch")
    assert shipped.network.path == weights.with_suffix(".onnx") and shipped._model is None
    assert load_graph_scorer(DEFAULT_MODEL).network.path == shipped.network.path
    for image in _images():
        assert shipped.score(image).score == pytest.approx(eager.score(image).score, abs=1e-3)
    code = ("import json, sys; from qfm_iqm.cli.main import main; status = main(sys.argv[1:]); "
            "print(json.dumps([status, sorted({'torch', 'timm', 'torchvision'} & set(sys.modules))]))")
    empty = tmp_path / "empty-cache"
    done = subprocess.run([sys.executable, "-c", code, "--quiet", "score", str(EXAMPLES), "-o", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, env={**os.environ, "QFM_IQM_CACHE": str(empty)}, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []], done.stderr
    assert not empty.exists() and (sorted(cache.iterdir()) if cache.is_dir() else []) == before


@pytest.mark.parametrize("damage", ["edited graph", "other probe scores", "missing graph", "edited JSON"])
def test_a_shipped_graph_that_is_not_the_recorded_one_is_refused(cache: Path, tmp_path: Path, damage: str) -> None:
    source = resolve_model(DEFAULT_MODEL)
    copy = tmp_path / source.name
    for suffix in (".safetensors", ".json", ".onnx"):
        shutil.copy(source.with_suffix(suffix), copy.with_suffix(suffix))
    info = json.loads(copy.with_suffix(".json").read_text())
    assert runtime.shipped_network(copy, info).path == copy.with_suffix(".onnx")  # intact: served
    if damage == "edited graph":
        copy.with_suffix(".onnx").write_bytes(copy.with_suffix(".onnx").read_bytes() + b"\0")
    elif damage == "missing graph":
        copy.with_suffix(".onnx").unlink()
    elif damage == "edited JSON":  # its graph record intact, but the JSON is no longer the weights' own
        info["command"] = "edited"
        copy.with_suffix(".json").write_text(json.dumps(info))
    else:
        info["graph"]["probe"] = (np.asarray(info["graph"]["probe"]) + 0.01).tolist()
    with pytest.warns(UserWarning, match="graph .* is unusable"):
        assert runtime.shipped_network(copy, info) is None


def test_ship_graph_records_a_checkpoints_graph_that_then_loads_without_an_export(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qfm_iqm.inference.pretrained import MODEL_FORMAT
    from qfm_iqm.inference.runtime import ship_graph
    from qfm_iqm.utils.checkpoint import save_checkpoint

    model = _tiny_model(3)
    scale = {"name": "MOS", "low": 0, "high": 100, "higher_is_better": True}
    save_checkpoint(tmp_path, model.state_dict(), {"format": MODEL_FORMAT, "model": model.config.to_dict(),
                                                   "score_scale": scale})
    graph = ship_graph(tmp_path / "model.safetensors")
    assert graph == tmp_path / "model.onnx"
    assert json.loads((tmp_path / "model.json").read_text())["graph"]["file"] == "model.onnx"
    monkeypatch.setattr(runtime, "export_onnx", _refuse_export)
    shipped, eager = load_model(tmp_path, runtime="onnx"), load_model(tmp_path, runtime="torch")  # JSON still checked
    assert shipped.network.path == graph
    image = _images()[1]
    assert shipped.score(image).score == pytest.approx(eager.score(image).score, abs=1e-3)


def test_network_calls_at_once_give_the_same_rows_in_input_order(cache: Path, tmp_path: Path) -> None:
    """``qfm-iqm score`` runs several single-threaded graph calls at once: the rows are those of one call
    at a time, to the last bit, in input order, a broken file included."""
    from qfm_iqm.scoring import score_files

    files = []
    for index, image in enumerate(_images() * 2):
        files.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(image).save(files[-1])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    files.insert(3, str(tmp_path / "broken.jpg"))
    one, three = (load_graph_scorer(DEFAULT_MODEL, threads=1, calls=calls) for calls in (1, 3))
    assert (one.calls, three.calls) == (1, 3)
    rows = [score_files(scorer, files, batch_size=2, workers=1) for scorer in (one, three)]
    assert [row.path for row in rows[1]] == files and rows[1][3].error is not None
    assert [(row.score, row.low, row.error) for row in rows[0]] == [(row.score, row.low, row.error) for row in rows[1]]
    with pytest.raises(ValueError, match="calls must be >= 1"):
        load_graph_scorer(DEFAULT_MODEL, calls=0)
