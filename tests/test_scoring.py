"""Tests for the scoring path: released-model registry, the Scorer API, quality maps and ``qfm-iqm score``."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import qfm_iqm.api
import qfm_iqm.inference.graph
from qfm_iqm import ScoreResult, Scorer, load_model
from qfm_iqm.cli.main import main
from qfm_iqm.data.images import ImageLoadError, set_max_image_pixels
from qfm_iqm.data.records import ImageRecord, LabelScale
from qfm_iqm.data.transforms import ensure_min_side
from qfm_iqm.inference import quality_map as qmap
from qfm_iqm.evaluation.conformal import calibrate
from qfm_iqm.inference.score_map import ConformalInterval
from qfm_iqm.inference.predict import predict_records, predict_whole_images
from qfm_iqm.inference.graph import GraphScorer
from qfm_iqm.metric import create_metric
from qfm_iqm.inference import pretrained
from qfm_iqm.inference.pretrained import (
    DEFAULT_MODEL,
    MODEL_FORMAT,
    export_release,
    list_pretrained,
    record_interval,
    register_pretrained,
)
from qfm_iqm.inference.checkpoint import load_trained_model
from qfm_iqm.models.qfm import ModelConfig, build_model
from qfm_iqm import scoring
from qfm_iqm.scoring import find_images, journal_path, read_results, score_files, settings_path, write_results
from qfm_iqm.utils.checkpoint import load_checkpoint, save_checkpoint

CROP = 64
MOS = {"name": "MOS", "low": 0, "high": 100, "higher_is_better": True}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny model (64-px crops) saved as a training checkpoint would be."""
    torch.manual_seed(0)
    config = ModelConfig(dim=64, num_heads=4, preprocessing={"input_size": CROP, "mean": [0.5] * 3, "std": [0.5] * 3})
    model = build_model(config, pretrained_backbone=False)
    with torch.no_grad():  # scores near the middle of the scale, so the clamp to [0, 100] never acts
        head = model.decoder.head.weight[0]
        head.mul_(0.05)
        model.decoder.norm.bias.copy_(0.5 * head / head.dot(head))
    directory = tmp_path_factory.mktemp("checkpoint")
    meta = {"format": MODEL_FORMAT, "model": model.config.to_dict(), "score_scale": MOS, "training": {"epochs": 1},
            "command": "qfm-iqm train ...", "code_version": "0.1.0", "dataset": "LIVEC", "train_size": 10}
    save_checkpoint(directory, model.state_dict(), meta)
    return directory


@pytest.fixture(scope="session")
def scorer(checkpoint: Path) -> Scorer:
    return load_model(checkpoint)


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (uint8), so resampling and compression behave like on photos."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- registry and release files ------------------------------------------------------------------


def test_default_release_is_registered_and_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    assert DEFAULT_MODEL == "qfm-iqm-lite0-livec-v2-2"
    assert {DEFAULT_MODEL, "qfm-iqm-lite0-livec-v2-1", "qfm-iqm-lite0-livec-v2", "qfm-iqm-lite0-livec"} <= set(list_pretrained())
    assert pretrained.get_pretrained(DEFAULT_MODEL).filename_stem == "qfm_iqm_lite0_livec_v2_2"
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not installed"):
        load_model()
    with pytest.raises(FileNotFoundError, match="neither a released model"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="already registered"):
        register_pretrained(DEFAULT_MODEL, "x", "duplicate")


def test_export_release_writes_fp16_copy_that_loads_by_name(
    checkpoint: Path, scorer: Scorer, tmp_path: Path, monkeypatch
) -> None:
    extra = {"score_scale": MOS, "training_data": {"dataset": "LIVEC", "images": 10}}
    path = export_release(checkpoint, tmp_path, pretrained.get_pretrained(DEFAULT_MODEL).filename_stem, extra)
    tensors, info = load_checkpoint(path)
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float16}
    assert tensors["backbone.model.bn1.num_batches_tracked"].dtype == torch.int64
    for key in ("model", "score_scale", "training_data", "training", "command", "code_version"):
        assert info[key] is not None, key
    assert not {"backbone", "preprocessing", "settings"} & set(info)  # each fact once: inside ``model``
    assert info["model"]["backbone"] == "tf_efficientnet_lite0" and info["model"]["preprocessing"]["input_size"] == CROP
    assert info["format"] == MODEL_FORMAT and info["training"] == {"epochs": 1} and info["release"]["dtype"] == "float16"
    assert path.stat().st_mode & 0o777 == path.with_suffix(".json").stat().st_mode & 0o777 == 0o644

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    released = load_model(DEFAULT_MODEL)
    assert all(p.dtype == torch.float32 for p in released.model.parameters())
    assert released.scale.name == "MOS" and released.info["release"]["name"] == "qfm_iqm_lite0_livec_v2_2"
    image = _pixels(90, 120)
    assert released.score(image).score == pytest.approx(scorer.score(image).score, abs=0.5)
    assert load_trained_model(path).config.dim == 64

    with pytest.raises(ValueError, match="score_scale"):
        export_release(checkpoint, tmp_path / "bad", "x", {"score_scale": None})


# -- the Scorer API -------------------------------------------------------------------------------


def test_all_input_types_give_the_same_score(scorer: Scorer, tmp_path: Path) -> None:
    pixels = _pixels(100, 140)
    path = _save(tmp_path / "img.png", pixels)
    float_tensor = torch.tensor(pixels).permute(2, 0, 1).float() / 255
    inputs = [
        path, str(path), Image.fromarray(pixels), pixels, pixels.astype(np.float64) / 255,
        float_tensor, torch.tensor(pixels).permute(2, 0, 1),
    ]
    results = [scorer.score(x) for x in inputs]
    assert len({(r.score, r.uncertainty) for r in results}) == 1
    assert results[0] == ScoreResult(results[0].score, results[0].uncertainty, str(path))
    assert results[2].path is None and math.isfinite(results[0].score) and results[0].uncertainty >= 0
    assert [r.score for r in scorer.score(float_tensor.unsqueeze(0).repeat(2, 1, 1, 1))] == [results[0].score] * 2


def test_scores_do_not_depend_on_batch_or_order(scorer: Scorer) -> None:
    images = [_pixels(80 + 10 * i, 100, seed=i) for i in range(4)]
    single = [scorer.score(x).score for x in images]
    assert [r.score for r in scorer.score(images)] == single
    assert [r.score for r in scorer.score(images[::-1])] == single[::-1]


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_images_scored_in_one_network_call_score_as_each_alone(checkpoint: Path, runtime: str) -> None:
    """What ``score_files`` does: several images' crops (of several sizes) in one call of the network."""
    scorer = load_model(checkpoint, runtime=runtime)
    images = [Image.fromarray(_pixels(70 + 13 * i, 90 + 31 * i, seed=i)) for i in range(5)]
    together = scorer.score_crop_stacks([scorer.crops(image) for image in images], [f"{i}.png" for i in range(5)])
    for i, (image, result) in enumerate(zip(images, together)):
        alone = scorer.score(image)
        assert result.path == f"{i}.png"
        assert result.score == pytest.approx(alone.score, abs=1e-3)  # MOS 0-100: 1e-5 on the normalised scale
        assert result.uncertainty == pytest.approx(alone.uncertainty, abs=1e-3)
    assert scorer.score_crop_stacks([], []) == []


def test_a_whole_image_pass_scores_the_prepared_image_in_one_piece(checkpoint: Path, tmp_path: Path) -> None:
    model = load_trained_model(checkpoint).eval()
    square = ImageRecord(path=_save(tmp_path / "a.png", _pixels(CROP, CROP)), label=0.5, raw_label=50.0)
    wide = ImageRecord(path=_save(tmp_path / "b.png", _pixels(CROP, 3 * CROP, seed=1)), label=0.5, raw_label=50.0)
    whole = predict_whole_images(model, [square, wide])
    assert whole[0] == pytest.approx(predict_records(model, [square], grid=1).scores[0], abs=1e-6)  # its one crop
    assert whole[1] != pytest.approx(predict_records(model, [wide], grid=1).scores[0], abs=1e-6)  # more than its centre
    model.backbone.kind = "vit"
    with pytest.raises(ValueError, match="vit backbone takes crops of a fixed size"):
        predict_whole_images(model, [square])


def test_grid_sets_the_crops_and_is_checked(scorer: Scorer, checkpoint: Path) -> None:
    image = Image.fromarray(_pixels(150, 200))
    dense = load_model(checkpoint, grid=4)
    assert scorer.crops(image).shape[0] == 9 and dense.crops(image).shape[0] == 16
    expected = dense.model(dense.crops(image)).score.mean().item() * (MOS["high"] - MOS["low"]) + MOS["low"]
    assert dense.score(image).score == pytest.approx(expected, abs=1e-4)
    assert dense.score(image).score != pytest.approx(scorer.score(image).score, abs=1e-6)
    with pytest.raises(ValueError, match="grid must be >= 1"):
        load_model(checkpoint, grid=0)


def test_grayscale_and_rgba_arrays_follow_the_file_rules(scorer: Scorer) -> None:
    gray = _pixels(80, 80)[..., 0]
    assert scorer.score(gray).score == scorer.score(np.repeat(gray[..., None], 3, axis=2)).score
    rgba = np.dstack([_pixels(80, 80), np.full((80, 80), 255, np.uint8)])
    assert scorer.score(rgba).score == scorer.score(rgba[..., :3]).score


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((10, 10, 2), np.uint8), ValueError),
        (np.full((10, 10), 1.5), ValueError),
        (np.zeros((10, 10), np.int32), TypeError),
        (torch.zeros(5, 3, 10, 10, 1), ValueError),
        (12, TypeError),
    ],
)
def test_unsupported_inputs_raise(scorer: Scorer, bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        scorer.score(bad)


def test_unreadable_path_raises_in_the_api(scorer: Scorer, tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        scorer.score(tmp_path / "empty.jpg")


def test_tiny_images_are_upscaled_by_the_small_image_rule(scorer: Scorer) -> None:
    tiny = Image.fromarray(_pixels(12, 30))
    upscaled = ensure_min_side(tiny, CROP)
    assert upscaled.size == (160, CROP)
    assert scorer.score(tiny).score == scorer.score(upscaled).score


# -- quality maps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 140), (20, 35), (CROP, CROP)])
def test_quality_map_shape_and_range(scorer: Scorer, shape: tuple[int, int]) -> None:
    heat = scorer.quality_map(_pixels(*shape))
    assert heat.shape == shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == 1.0 or not heat.any()


def test_assemble_quality_map_pastes_tokens_in_place() -> None:
    attention = torch.zeros(4, 4)  # 2x2 crops of 2x2 tokens, on a 16x16 image of 8-px crops
    attention[3, 3] = 1.0  # bottom-right crop, bottom-right token
    heat = qmap.assemble_quality_map(attention, (16, 16), 8, (2, 2), (16, 16))
    assert np.unravel_index(heat.argmax(), heat.shape) >= (12, 12) and heat[:8, :8].max() == 0.0
    with pytest.raises(ValueError, match="square"):
        qmap.assemble_quality_map(torch.zeros(1, 5), (8, 8), 8, (1, 1), (8, 8))
    assert qmap.covering_grid(1000, 100, 224, 3) == (5, 3)


def test_overlay_with_and_without_matplotlib(monkeypatch) -> None:
    image = Image.fromarray(np.full((4, 6, 3), 128, np.uint8))
    heat = np.zeros((4, 6), np.float32)
    heat[0, 0] = 1.0
    monkeypatch.setattr(qmap, "_colormap", lambda: None)
    red = np.asarray(qmap.overlay_quality_map(image, heat))
    assert red[0, 0, 0] > 128 and red[0, 0, 1] < 128 and (red[1:, 1:] == 128).all()
    monkeypatch.setattr(qmap, "_colormap", lambda: lambda h: np.stack([h, h, h, np.ones_like(h)], axis=-1))
    gray = np.asarray(qmap.overlay_quality_map(image, heat))
    assert gray.shape == (4, 6, 3) and gray[0, 0, 0] > gray[1, 1, 0]


# -- inputs: discovery and robustness ------------------------------------------------------------


def _weird_files(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Files that must be scored and files that must fail, by description."""
    folder.mkdir()
    px = _pixels(90, 120)
    good: dict[str, Path] = {"rgb": _save(folder / "rgb.png", px), "tiny": _save(folder / "tiny.png", _pixels(10, 14))}
    good["gray"] = _save(folder / "gray.png", px[..., 0])
    Image.fromarray(px).convert("P", palette=Image.Palette.ADAPTIVE).save(good.setdefault("palette", folder / "p.png"))
    _save(good.setdefault("rgba", folder / "rgba.png"), np.dstack([px, np.full(px.shape[:2], 100, np.uint8)]))
    Image.fromarray(px).convert("CMYK").save(good.setdefault("cmyk", folder / "cmyk.JPG"), quality=95)
    Image.fromarray(px[..., 1].astype(np.uint16) * 257).save(good.setdefault("16bit", folder / "sixteen.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.fromarray(px).save(good.setdefault("exif", folder / "exif.png"), exif=exif)
    frames = [Image.fromarray(_pixels(70, 70, seed)) for seed in (1, 2)]
    frames[0].save(good.setdefault("gif", folder / "anim.gif"), save_all=True, append_images=frames[1:], duration=50)

    bad = {"zero": folder / "zero.jpg", "text": folder / "notes.png", "corrupt": folder / "corrupt.jpg"}
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("not an image")
    bad["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)))
    Image.fromarray(px).save(folder / "full.jpg", quality=90)
    bad["truncated"] = folder / "truncated.jpg"
    bad["truncated"].write_bytes((folder / "full.jpg").read_bytes()[:600])
    (folder / "full.jpg").unlink()
    bad["huge"] = _save(folder / "huge.png", _pixels(200, 200))  # 40000 px, over the test's --max-pixels
    return good, bad


def test_cli_survives_every_kind_of_bad_input(scorer: Scorer, checkpoint: Path, tmp_path: Path, capsys) -> None:
    good, bad = _weird_files(tmp_path / "in")
    explicit_text = tmp_path / "readme.txt"
    explicit_text.write_text("hello")
    out = tmp_path / "out.csv"
    argv = ["--quiet", "score", str(tmp_path / "in"), str(explicit_text), "--model", str(checkpoint),
            "--workers", "2", "--batch-size", "4", "--max-pixels", "30000", "-o", str(out)]
    assert main(argv) == 1
    rows = {Path(r["path"]).name: r for r in _read_csv(out)}
    assert len(rows) == len(good) + len(bad) + 1
    for name, path in good.items():
        row = rows[path.name]
        assert row["error"] == "" and math.isfinite(float(row["score"])), name
    stderr = capsys.readouterr().err
    expected = {"zero": "empty", "text": "not a recognised image", "truncated": "truncated", "huge": "max-pixels"}
    for name, path in [*bad.items(), ("explicit_text", explicit_text)]:
        row = rows[path.name]
        assert row["score"] == "" and row["uncertainty"] == "" and row["error"], name
        assert expected.get(name, "") in row["error"], (name, row["error"])
        assert f"failed: {row['path']}: " in stderr
    assert f"{len(bad) + 1} of {len(rows)} inputs failed" in stderr

    # the images that loaded score exactly as the API scores the same pixels
    with Image.open(good["exif"]) as stored:
        assert ImageOps.exif_transpose(stored).size == (90, 120)
        assert float(rows["exif.png"]["score"]) == scorer.score(ImageOps.exif_transpose(stored)).score
        assert float(rows["exif.png"]["score"]) != scorer.score(stored).score
    with Image.open(good["gif"]) as gif:
        assert float(rows["anim.gif"]["score"]) == scorer.score(gif.convert("RGB")).score
    assert float(rows["sixteen.png"]["score"]) == scorer.score(_pixels(90, 120)[..., 1]).score
    assert float(rows["tiny.png"]["score"]) == scorer.score(good["tiny"]).score

    assert main(["--quiet", "score", str(bad["huge"]), "--model", str(checkpoint), "--max-pixels", "0"]) == 0
    assert "huge.png" in capsys.readouterr().out


def test_bomb_limit_reaches_api_and_message_is_clear(scorer: Scorer, tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", _pixels(200, 200))
    previous = set_max_image_pixels(30000)
    try:
        with pytest.raises(ImageLoadError, match="--max-pixels"):
            scorer.score(path)
        (result,) = score_files(scorer, [path])
        assert result.score is None and "decompression" in result.error.lower()
    finally:
        set_max_image_pixels(previous)


def test_find_images_folders_patterns_and_recursion(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "B.JPEG", "c.txt", "sub/d.webp"):
        _save(tmp_path / name, _pixels(8, 8)) if not name.endswith(".txt") else (tmp_path / name).write_text("x")
    files, warnings = find_images([tmp_path])
    assert [Path(f.path).name for f in files] == ["B.JPEG", "a.png", "d.webp"] and not warnings
    files, _ = find_images([tmp_path], recursive=False)
    assert [Path(f.path).name for f in files] == ["B.JPEG", "a.png"]
    files, _ = find_images([str(tmp_path / "*"), str(tmp_path / "a.png"), str(tmp_path / "nothing*.png")])
    assert [Path(f.path).name for f in files] == ["B.JPEG", "a.png", "d.webp", "nothing*.png"]
    assert files[-1].error == "no image file matches this pattern"
    files, _ = find_images([str(tmp_path / "**" / "*.webp")])
    assert [Path(f.path).name for f in files] == ["d.webp"]
    (tmp_path / "empty").mkdir()
    assert find_images([tmp_path / "empty"]) == ([], [f"no images in folder {tmp_path / 'empty'}"])


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        _save(folder / f"img{i}.png", _pixels(70 + 9 * i, 90, seed=i))
    (folder / "broken.jpg").write_bytes(b"garbage")
    return folder


def test_cli_scores_identical_across_batch_size_workers_and_order(
    scorer: Scorer, checkpoint: Path, image_folder: Path, tmp_path: Path
) -> None:
    paths = sorted(str(p) for p in image_folder.glob("img*.png"))
    runs = []
    settings = [["--batch-size", "1"], ["--batch-size", "3", "--workers", "2"], ["--batch-size", "16"]]
    for i, options in enumerate(settings):
        out = tmp_path / f"run{i}.json"
        order = paths[::-1] if i == 1 else paths
        assert main(["--quiet", "score", *order, "--model", str(checkpoint), "-o", str(out), *options]) == 0
        runs.append({row["path"]: row["score"] for row in json.loads(out.read_text())})
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] == {p: scorer.score(p).score for p in paths}


def test_progress_bar_counts_every_input(scorer: Scorer, image_folder: Path, capsys) -> None:
    files = sorted(image_folder.iterdir())  # 5 images and a broken file, in one loading batch
    score_files(scorer, files, batch_size=16, progress=True)
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "6/6" in final


def test_cli_output_formats_parse_back(
    scorer: Scorer, checkpoint: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    model = str(checkpoint)
    parsed = {}
    for suffix in ("csv", "json", "jsonl"):
        out = tmp_path / f"scores.{suffix}"
        assert main(["--quiet", "score", str(image_folder), "--model", model, "-o", str(out)]) == 1
        text = out.read_text()
        if suffix == "csv":
            assert text.splitlines()[0] == "path,score,low,high,uncertainty,error"
            rows = list(csv.DictReader(io.StringIO(text)))
            numeric = ("score", "low", "high", "uncertainty")
            rows = [{k: (float(v) if k in numeric and v else v or None) for k, v in r.items()} for r in rows]
        elif suffix == "json":
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines()]
        assert all(list(r) == ["path", "score", "low", "high", "uncertainty", "error"] for r in rows)
        assert all(r["low"] is None and r["high"] is None for r in rows)  # the checkpoint records no interval
        parsed[suffix] = rows
    assert parsed["csv"] == parsed["json"] == parsed["jsonl"]
    broken = [r for r in parsed["json"] if r["error"]]
    assert [Path(r["path"]).name for r in broken] == ["broken.jpg"] and broken[0]["score"] is None
    assert len(parsed["json"]) == 6

    capsys.readouterr()
    assert main(["--quiet", "score", str(image_folder / "img0.png"), "--model", model]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "score", "uncertainty"]
    assert table[1].split()[1] == f"{scorer.score(image_folder / 'img0.png').score:.2f}"


def test_cli_usage_errors_exit_2(scorer: Scorer, checkpoint: Path, tmp_path: Path, capsys) -> None:
    model = str(checkpoint)
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "a.png", _pixels(70, 70))
    assert main(["score", str(tmp_path / "empty"), "--model", model]) == 2
    assert main(["score", str(tmp_path / "none*.png"), "--model", model]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "a.png"), "--model", model, "-o", str(tmp_path / "out.xlsx")]) == 2
    assert main(["score", str(tmp_path / "a.png"), "--model", str(tmp_path / "nope")]) == 2
    assert "neither a released model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["score"])
    assert exit_info.value.code == 2


def test_cli_map_writes_overlays(scorer: Scorer, checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _save(tmp_path / "a" / "x.png", _pixels(80, 130))
    _save(tmp_path / "b" / "x.png", _pixels(40, 50))
    maps = tmp_path / "maps"
    assert main(["--quiet", "score", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(checkpoint),
                 "--map", str(maps), "-o", str(tmp_path / "s.csv")]) == 0
    assert sorted(p.name for p in maps.iterdir()) == ["x_2_map.png", "x_map.png"]
    with Image.open(maps / "x_map.png") as overlay:
        assert overlay.size == Image.open(first).size and overlay.mode == "RGB"
    with Image.open(maps / "x_2_map.png") as overlay:
        assert overlay.size == (50, 40)


def test_installed_command_help() -> None:
    command = Path(sys.executable).parent / "qfm-iqm"
    done = subprocess.run([str(command), "score", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--max-pixels" in done.stdout and "upscaled" in done.stdout


# -- the -o file: never lost, one row per file, resumable ------------------------------------------


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def _die_at(monkeypatch, image: int, how: str) -> None:
    """Make the ``image``-th network call (1-based; the ``image``-th image with ``--batch-size 1``) end the
    run: SIGTERM to this process, or a hard kill. Either scorer class may score (a cached graph's or
    the loaded model's)."""
    calls = iter(range(1, 10**6))
    for kind in (Scorer, GraphScorer):
        original = kind.score_crop_stacks

        def score_crop_stacks(self, *args, original=original, **kwargs) -> list[ScoreResult]:
            if next(calls) == image:
                if how == "kill":
                    raise _Killed
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(kind, "score_crop_stacks", score_crop_stacks)


@pytest.mark.parametrize(("suffix", "threads"), [("csv", 1), ("json", 1), ("jsonl", 1), ("csv", 2)])
@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_stopped_or_killed_run_then_resume_gives_the_rows_of_an_uninterrupted_run(
    checkpoint: Path, image_folder: Path, tmp_path: Path, monkeypatch, capsys, suffix: str, threads: int, how: str
) -> None:
    """With one network call at a time the rows kept are known exactly; with two at once (a graph's calls
    run in threads) the stop lands within a call of it, and the resumed file is the same."""
    command = ["--quiet", "score", str(image_folder), "--model", str(checkpoint), "--batch-size", "1",
               "--threads", str(threads)]
    whole = tmp_path / f"whole.{suffix}"
    assert main([*command, "-o", str(whole)]) == 1
    out = tmp_path / f"cut.{suffix}"
    monkeypatch.setattr(scoring, "SYNC_EVERY", 2)  # rows are flushed every 2 files
    _die_at(monkeypatch, 3, how)  # broken.jpg, img0, img1 done; stopped or killed in img2
    if how == "kill":
        with pytest.raises(_Killed):
            main([*command, "-o", str(out)])
        with open(journal_path(out), "a") as journal:
            journal.write('{"path": "' + str(image_folder))  # a row cut short by the kill
    else:
        assert main([*command, "-o", str(out)]) == 128 + signal.SIGTERM
        stopped = capsys.readouterr().err
        assert "stopped by SIGTERM after" in stopped and "of 6 inputs; its rows are kept in" in stopped
        assert threads > 1 or "after 4 of 6 inputs" in stopped
    assert not out.exists() and not settings_path(out).exists()
    rows = journal_path(out).read_text().splitlines()[1:]  # after the line of settings
    if threads == 1:
        assert len(rows) == {"kill": 2 + 1, "sigterm": 4}[how]  # killed: the last flush and the cut row
    monkeypatch.undo()
    assert main([*command, "-o", str(out)]) == 2
    assert "holds the rows of an interrupted run: add --resume" in capsys.readouterr().err
    assert main([*command, "-o", str(out), "--resume"]) == 1
    assert out.read_text() == whole.read_text()
    assert json.loads(settings_path(out).read_text()) == json.loads(settings_path(whole).read_text())
    assert not journal_path(out).exists()


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not be loaded")


def test_existing_output_is_only_replaced_with_overwrite_and_once_complete(
    checkpoint: Path, image_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    command = ["--quiet", "score", str(image_folder / "img0.png"), "--model", str(checkpoint)]
    out = tmp_path / "scores.csv"
    out.write_text("precious results\n")
    monkeypatch.setattr(qfm_iqm.api, "load_model", _no_model)
    monkeypatch.setattr(qfm_iqm.inference.graph, "load_graph_scorer", _no_model)
    assert main([*command, "-o", str(out)]) == 2  # refused before the model loads
    assert "scores.csv exists: add --overwrite" in capsys.readouterr().err
    (tmp_path / "folder.csv").mkdir()
    assert main([*command, "-o", str(tmp_path / "folder.csv")]) == 2
    assert "is a folder" in capsys.readouterr().err
    monkeypatch.undo()
    _die_at(monkeypatch, 1, "kill")
    with pytest.raises(_Killed):
        main([*command, "-o", str(out), "--overwrite"])
    assert out.read_text() == "precious results\n"
    monkeypatch.undo()
    assert main([*command, "-o", str(out), "--overwrite"]) == 0
    assert [r.path for r in read_results(out)] == [str(image_folder / "img0.png")]


@pytest.mark.parametrize(("suffix", "text"), [("csv", "name,mos\na.png,3\n"), ("jsonl", '{"name": "a.png"}\n'),
                                              ("json", '{"path": "a.png"}\n'), ("csv", "path,score,uncertainty,error\n"
                                                                                "a.png,high,0.1,\n")])
def test_resume_refuses_a_file_that_is_not_a_score_file(
    checkpoint: Path, image_folder: Path, tmp_path: Path, capsys, suffix: str, text: str
) -> None:
    command = ["--quiet", "score", str(image_folder / "img0.png"), "--model", str(checkpoint)]
    out = tmp_path / f"scores.{suffix}"
    assert main([*command, "-o", str(out)]) == 0  # a score file and its settings, then other content
    out.write_text(text)
    assert main([*command, "-o", str(out), "--resume"]) == 2
    assert f"scores.{suffix}" in (err := capsys.readouterr().err) and "not a " in err
    assert out.read_text() == text


def test_resume_keeps_scored_rows_retries_failed_ones_and_checks_settings(
    checkpoint: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    inputs = [str(p) for p in sorted(image_folder.glob("img*.png"))]
    command = ["--quiet", "score", *inputs, "--model", str(checkpoint)]
    for suffix in ("csv", "json", "jsonl"):
        out = tmp_path / f"scores.{suffix}"
        assert main([*command, "-o", str(out)]) == 0
        full = read_results(out)
        # 3 rows kept (the 2nd a failure); 12.5 marks a kept row; an extra row of a file not named
        write_results([replace(full[0], score=12.5), ScoreResult(None, None, inputs[1], "failed"), full[2],
                       ScoreResult(1.0, 0.5, "elsewhere.png")], out)
        capsys.readouterr()
        assert main([*command, "-o", str(out), "--resume"]) == 0
        assert "2 inputs already scored" in capsys.readouterr().err
        assert read_results(out) == [ScoreResult(1.0, 0.5, "elsewhere.png"), replace(full[0], score=12.5), *full[1:]]
        # another grid, or a file whose settings are unknown: refused, and the file is left as it was
        before = out.read_text()
        assert main([*command, "-o", str(out), "--resume", "--grid", "4"]) == 2
        assert "cannot resume" in (err := capsys.readouterr().err) and "(grid 3 there, 4 now)" in err
        settings_path(out).unlink()
        assert main([*command, "-o", str(out), "--resume"]) == 2
        assert "settings its scores were made with are unknown" in capsys.readouterr().err
        assert out.read_text() == before
    assert main([*command, "--resume"]) == 2
    assert "--resume and --overwrite need -o FILE" in capsys.readouterr().err


def test_results_files_read_back(tmp_path: Path) -> None:
    results = [ScoreResult(0.25, 0.125, "a.png"), ScoreResult(None, None, "b,c.png", "bad, really")]
    for suffix in ("csv", "jsonl", "json"):
        write_results(results, tmp_path / f"r.{suffix}")
        assert read_results(tmp_path / f"r.{suffix}") == results


def test_the_same_file_named_several_ways_is_scored_once(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(image_folder, target_is_directory=True)
    named = ["images/img0.png", str(image_folder / "img0.png"), "images/../images/img0.png", "link/img0.png",
             "./images/img1.png", "link"]
    files, _ = find_images(named)
    expected = ["images/img0.png", "images/img1.png", "link/broken.jpg", "link/img2.png", "link/img3.png",
                "link/img4.png"]
    assert [f.path for f in files] == expected


def test_resume_from_another_working_directory_skips_what_is_scored(
    scorer: Scorer, checkpoint: Path, image_folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "score", "images/img0.png", "images/img1.png", "--model", str(checkpoint),
                 "-o", "scores.jsonl"]) == 0
    monkeypatch.chdir(image_folder)
    capsys.readouterr()
    assert main(["--quiet", "score", "img0.png", str(image_folder / "img1.png"), "img2.png", "--model",
                 str(checkpoint), "-o", "../scores.jsonl", "--resume"]) == 0
    assert "2 inputs already scored" in capsys.readouterr().err
    rows = read_results(tmp_path / "scores.jsonl")  # relative paths stay relative to the file's first run
    assert [r.path for r in rows] == ["images/img0.png", "images/img1.png", "images/img2.png"]
    assert rows[2].score == scorer.score(image_folder / "img2.png").score


# -- the checkpoint's test grid and calibrated interval --------------------------------------------


def _copy(checkpoint: Path, folder: Path, **entries: object) -> Path:
    """A copy of ``checkpoint`` in ``folder`` with ``entries`` added to its JSON."""
    tensors, info = load_checkpoint(checkpoint)
    save_checkpoint(folder, tensors, {**info, **entries})
    return folder


def test_the_checkpoints_grid_is_used_unless_told_otherwise(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    four = _copy(checkpoint, tmp_path / "four", training={"epochs": 1, "eval_grid": 4})
    image = _save(tmp_path / "a.png", _pixels(150, 200))
    assert load_model(checkpoint).grid == 3  # it records none
    assert load_model(four).grid == create_metric(four, "cpu").grid == 4 and load_model(four, grid=2).grid == 2
    expected = {grid: load_model(four, grid=grid).score(image).score for grid in (3, 4)}
    assert expected[3] != expected[4]
    for options, grid in (([], 4), (["--grid", "3"], 3)):
        out = tmp_path / f"scores{grid}.json"
        assert main(["--quiet", "score", str(image), "--model", str(four), "-o", str(out), *options]) == 0
        assert read_results(out)[0].score == expected[grid]
        assert json.loads(settings_path(out).read_text())["settings"]["grid"] == grid
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)  # a release copy records it under "settings"
    export_release(four, tmp_path, pretrained.get_pretrained(DEFAULT_MODEL).filename_stem, {"score_scale": MOS})
    assert load_model(DEFAULT_MODEL).grid == 4


def test_a_recorded_interval_gives_every_score_its_range_in_every_output(
    checkpoint: Path, scorer: Scorer, image_folder: Path, tmp_path: Path, capsys
) -> None:
    calibrated = _copy(checkpoint, tmp_path / "calibrated")
    interval = ConformalInterval(0.9, 0.1, calibration_size=50)
    record_interval(calibrated, interval)
    ranged = load_model(calibrated)
    assert ranged.interval == interval and scorer.interval is None
    image = image_folder / "img0.png"
    result, plain = ranged.score(image), scorer.score(image)
    assert (result.score, result.uncertainty) == (plain.score, plain.uncertainty) and plain.low is plain.high is None
    assert (result.low, result.high) == pytest.approx((result.score - 10, result.score + 10))  # 0.1 of 0-100
    for suffix in ("csv", "json", "jsonl"):
        out = tmp_path / f"scores.{suffix}"
        assert main(["--quiet", "score", str(image_folder), "--model", str(calibrated), "-o", str(out)]) == 1
        rows = read_results(out)
        scored = [r for r in rows if r.error is None]
        assert len(scored) == 5 and all(0 <= r.low <= r.score <= r.high <= 100 for r in scored)
        assert [(r.low, r.high) for r in rows if r.error] == [(None, None)]
        assert json.loads(settings_path(out).read_text())["settings"]["interval"] == interval.to_dict()
    capsys.readouterr()
    assert main(["--quiet", "score", str(image), "--model", str(calibrated)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "score", "low", "high", "uncertainty"]
    assert table[1].split()[1:4] == [f"{result.score:.2f}", f"{result.low:.2f}", f"{result.high:.2f}"]
    # a file scored before the model's interval was recorded is not resumed with it
    later, out = _copy(checkpoint, tmp_path / "later"), tmp_path / "before.csv"
    assert main(["--quiet", "score", str(image), "--model", str(later), "-o", str(out)]) == 0
    record_interval(later, interval)
    capsys.readouterr()
    assert main(["--quiet", "score", str(image), "--model", str(later), "-o", str(out), "--resume"]) == 2
    assert "cannot resume" in (err := capsys.readouterr().err) and 'interval null there, {"coverage": 0.9' in err


def test_ranges_stay_on_the_scale_and_in_order_whatever_the_network_outputs(scorer: Scorer) -> None:
    images = [_pixels(90, 120, seed=i) for i in range(3)]
    wide = Scorer(scorer.model, scorer.scale, interval=ConformalInterval(0.9, 0.8))
    for r in wide.score(images):  # the mapped range approaches the ends of the scale without reaching them
        assert 0.0 < r.low < 5.0 and 95.0 < r.high < 100.0
    dmos = Scorer(scorer.model, LabelScale(0, 10, False, "DMOS"), interval=ConformalInterval(0.9, 0.1))
    for r in dmos.score(images):  # lower is better: normalised bounds swap on this scale
        assert (r.low, r.high) == pytest.approx((r.score - 1, r.score + 1))
    model = copy.deepcopy(scorer.model)
    with torch.no_grad():
        model.decoder.head.weight.mul_(50.0)  # drives the raw output far outside [0, 1]
    results = Scorer(model, scorer.scale, interval=ConformalInterval(0.9, 0.1)).score(images)
    for r in results:  # inside the scale, the range around its score, none tied at an end
        assert 0 < r.low < r.score < r.high < 100
    assert len({r.score for r in results}) == len(results)


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_result_files_from_before_low_and_high_are_read_and_resumed(
    checkpoint: Path, image_folder: Path, tmp_path: Path, monkeypatch, capsys, suffix: str
) -> None:
    inputs = [str(p) for p in sorted(image_folder.glob("img*.png"))]
    command = ["--quiet", "score", *inputs, "--model", str(checkpoint)]
    whole = tmp_path / f"whole.{suffix}"
    assert main([*command, "-o", str(whole)]) == 0
    old, kept = tmp_path / f"old.{suffix}", read_results(whole)[:2]
    monkeypatch.setattr(scoring, "FIELDS", scoring.LEGACY_FIELDS)  # the columns of earlier versions
    write_results(kept, old)
    monkeypatch.undo()
    assert "low" not in old.read_text() and read_results(old) == kept
    settings_path(old).write_text(settings_path(whole).read_text())
    capsys.readouterr()
    assert main([*command, "-o", str(old), "--resume"]) == 0
    assert "2 inputs already scored" in capsys.readouterr().err
    assert old.read_text() == whole.read_text()


def test_calibrate_records_the_interval_of_held_out_predictions(checkpoint: Path, tmp_path: Path, capsys) -> None:
    calibrated = _copy(checkpoint, tmp_path / "calibrated")
    rng = np.random.default_rng(0)
    labels = rng.uniform(0.2, 0.8, 200)
    scores = labels + rng.normal(0, 0.05, 200)
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("path,label,score_normalised\n" + "".join(
        f"{i}.png,{label},{score}\n" for i, (label, score) in enumerate(zip(labels.tolist(), scores.tolist()))))
    assert main(["calibrate", str(calibrated), str(predictions), "--coverage", "0.8"]) == 0
    expected = calibrate(scores, labels, 0.8)
    assert json.loads(capsys.readouterr().out)["interval"] == expected.to_dict()
    assert load_model(calibrated).interval == expected
    (tmp_path / "scores.csv").write_text("path,mos\na.png,3\n")
    assert main(["calibrate", str(calibrated), str(tmp_path / "scores.csv")]) == 2
    assert "no column score_normalised, label" in capsys.readouterr().err
    predictions.write_text("path,label,score_normalised\na.png,0.5,0.4\n")
    assert main(["calibrate", str(calibrated), str(predictions)]) == 2
    assert "1 calibration images are too few for 90% coverage (need 9)" in capsys.readouterr().err
    assert load_model(calibrated).interval == expected  # left as it was
