"""Graded degradations, the pairs the ranking loss trains on, and the degradation check."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import tiny_config
from qfm_iqm.data.degradations import HELD_OUT_KINDS, KINDS, STRENGTHS, TRAINED_KINDS, degrade, levels
from qfm_iqm.data.records import IQADataset, LabelScale
from qfm_iqm.data.splits import Split
from qfm_iqm.data.torch_datasets import DegradationPairs, degraded_stack, stack_position
from qfm_iqm.data.transforms import Preprocessing, TrainTransform
from qfm_iqm.experiments import protocol
from qfm_iqm.evaluation.degradation_check import degradation_check, ordered_fraction, records_named, step_fractions
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.trainer import Trainer


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A smooth scene with edges and texture, mid-grey on average."""
    y, x = np.mgrid[0:256, 0:256]  # large enough that JPEG 2000 at ratio 320 is not all header
    pixels = 128 + 60 * np.sin(x / 6.0)[..., None] * np.cos(y / 9.0)[..., None] * np.array([1.0, 0.8, 0.6])
    pixels[80:160, 80:160] = [200, 60, 40]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("kind", KINDS)
def test_each_level_moves_the_image_further_from_the_original(photo, kind):
    original = np.asarray(photo, dtype=np.float64)
    distance = [np.abs(np.asarray(degrade(photo, kind, level, seed=3), dtype=np.float64) - original).mean()
                for level in range(levels(kind) + 1)]
    assert distance[0] == 0.0
    assert all(a < b for a, b in zip(distance, distance[1:])), distance
    again = degrade(photo, kind, levels(kind), seed=3)
    assert np.array_equal(np.asarray(again), np.asarray(degrade(photo, kind, levels(kind), seed=3)))


def test_unknown_kinds_and_levels_are_refused(photo):
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(photo, "rain", 1)
    with pytest.raises(ValueError, match="levels 0-3"):
        degrade(photo, "blur", 4)
    with pytest.raises(ValueError, match="unknown degradation 'rain'"):
        TrainConfig(rank_kinds=["blur", "rain"])


def test_held_out_kinds_are_every_kind_the_default_ranking_never_trains():
    assert set(HELD_OUT_KINDS).isdisjoint(TrainConfig().rank_kinds)
    assert set(TRAINED_KINDS) | set(HELD_OUT_KINDS) == set(KINDS)
    assert TrainConfig().ranked_kinds == () and TrainConfig(rank_weight=1.0).ranked_kinds == TRAINED_KINDS


def test_pairs_are_one_kind_milder_first_and_the_same_crop(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    record = SimpleNamespace(path=path, label=0.5)
    pre = Preprocessing(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    kinds = ("gaussian_noise", "blur", "jpeg", "contrast")
    pairs = DegradationPairs([record], TrainTransform(pre), seed=0, views=40, kinds=kinds)
    seen = set()
    for index in range(40):
        (kind, milder), (same_kind, stronger) = pairs.versions(index)
        assert kind == same_kind and 0 <= milder < stronger <= levels(kind)
        seen.add(kind)
    assert seen == set(kinds)
    index = next(i for i in range(40) if pairs.versions(i)[0] == ("blur", 0))
    crops = pairs[index]
    assert crops.shape == (2, 3, 64, 64)
    # blur leaves the mean of a crop unchanged but not its detail: the same crop, damaged
    assert abs(crops[0].mean() - crops[1].mean()) < 0.02 and not torch.allclose(crops[0], crops[1])


def test_stack_positions_cover_every_version_once():
    stack = degraded_stack(TRAINED_KINDS)
    positions = [stack_position(TRAINED_KINDS, kind, level) for kind in TRAINED_KINDS for level in range(1, levels(kind) + 1)]
    assert sorted(positions) == list(range(1, len(stack)))
    assert stack_position(TRAINED_KINDS, "gaussian_noise", 0) == 0
    assert len(stack) == 1 + sum(len(STRENGTHS[kind]) for kind in TRAINED_KINDS)


def test_additive_noise_is_gaussian_noise_and_its_old_name_still_reads():
    from qfm_iqm.data.degradations import check_kinds
    from qfm_iqm.training.config import TrainConfig

    assert "noise" not in STRENGTHS and TRAINED_KINDS[0] == "gaussian_noise"
    assert check_kinds(["noise", "blur"]) == ("gaussian_noise", "blur")  # as records of earlier versions name it
    recorded = {**TrainConfig().to_dict(), "rank_kinds": ["noise", "jpeg"]}
    assert TrainConfig.from_record(recorded).rank_kinds == ["gaussian_noise", "jpeg"]
    with pytest.raises(ValueError, match="named twice"):
        check_kinds(["noise", "gaussian_noise"])


def test_the_kinds_added_for_the_held_out_check_do_what_their_names_say(photo):
    original = np.asarray(photo, dtype=np.int16)
    shifted = np.asarray(degrade(photo, "chromatic_aberration", 1), dtype=np.int16)  # 2 px each way
    assert np.array_equal(shifted[:, 2:, 0], original[:, :-2, 0])  # red moved right
    assert np.array_equal(shifted[:, :-2, 2], original[:, 2:, 2])  # blue moved left
    assert np.array_equal(shifted[..., 1], original[..., 1])  # green kept
    hazy = np.asarray(degrade(photo, "haze", 3), dtype=np.float64)
    assert np.abs(hazy - (0.35 * original + 0.65 * 220)).max() <= 0.5
    assert np.ptp(hazy) < 0.4 * np.ptp(original)
    smeared = degrade(photo, "median", 2)  # a 5x5 median: the value at a pixel is its window's median
    window = original[100 - 2 : 100 + 3, 60 - 2 : 60 + 3, 0]
    assert np.asarray(smeared)[100, 60, 0] == int(np.median(window))
    encoded = degrade(photo, "webp", 3)
    assert encoded.size == photo.size and encoded.mode == "RGB"
    bled = degrade(photo, "colour_diffusion", 3)  # the chroma blurred, the luma kept
    luma = [np.asarray(image.convert("YCbCr"), dtype=np.int16)[..., 0] for image in (photo, bled)]
    assert np.abs(luma[1] - luma[0]).max() <= 3
    assert np.abs(np.asarray(bled, dtype=np.int16) - original).max() > 40  # the red square's colour spread
    palette = np.asarray(degrade(photo, "colour_quantisation", 3)).reshape(-1, 3)
    assert len(np.unique(palette, axis=0)) <= 6


def test_ordered_fraction_counts_pairs_with_the_milder_higher():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 2.0]])  # photo 1: all 3 right; photo 2: none right (a tie is wrong)
    assert ordered_fraction(scores) == pytest.approx(0.5)
    assert step_fractions(scores) == [0.5, 0.5]  # level 0 vs 1: photo 1 right; 1 vs 2: photo 1 right, photo 2 tied

class _Brightness(nn.Module):
    """Scores a crop by its mean value: brighter is better."""

    config = SimpleNamespace(preprocessing={"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})

    def forward(self, crops):
        return SimpleNamespace(member_scores=crops.mean(dim=(1, 2, 3))[:, None])  # a panel of one


def test_degradation_check_scores_every_level_of_every_photo(tmp_path, photo):
    records = []
    for k in range(3):
        photo.rotate(90 * k).save(tmp_path / f"p{k}.png")
        records.append(SimpleNamespace(path=tmp_path / f"p{k}.png"))
    check = degradation_check(_Brightness(), records, grid=2, kinds=("underexposure", "overexposure"),
                              trained_kinds=("overexposure",))
    assert check["underexposure"] == {"ordered": 1.0, "pairs": 3 * 6, "steps": [1.0, 1.0, 1.0], "trained": False}
    assert check["overexposure"]["ordered"] == 0.0 and check["overexposure"]["trained"]


class _Constant(nn.Module):
    """Scores every crop far below the scale, lower the darker: raw scores a clamp would tie at 0."""

    config = _Brightness.config

    def forward(self, crops):
        return SimpleNamespace(member_scores=crops.mean(dim=(1, 2, 3))[:, None] - 5.0)


def test_the_check_orders_scores_below_the_scale_through_the_map(tmp_path, photo):
    photo.save(tmp_path / "p.png")
    check = degradation_check(_Constant(), [SimpleNamespace(path=tmp_path / "p.png")], grid=1, kinds=("underexposure",))
    assert check["underexposure"]["ordered"] == 1.0  # a clamp to [0, 1] would have tied every level


def test_ranking_loss_trains_on_pairs_from_labelled_and_unlabelled_images(tmp_path, blur_records):
    pool = [SimpleNamespace(path=r.path, label=float("nan")) for r in blur_records[8:10]]
    trainer = Trainer(tiny_config(mode="deiqt", rank_weight=1.0, rank_pairs=4, epochs=1), blur_records[:8],
                      tmp_path, pool, progress=False)
    assert len(trainer.rank_loader.dataset) == 10
    history = trainer.fit()
    assert history.epochs[-1]["rank"] > 0


def test_frozen_backbone_pairs_come_from_the_cached_stack(tmp_path, blur_records):
    config = tiny_config(mode="deiqt", rank_weight=1.0, rank_pairs=2, freeze_backbone=True, crop_bank=2,
                         feature_cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, blur_records[:8], tmp_path / "run", progress=False)
    pairs = trainer.rank_loader.dataset
    tokens = pairs[0]
    (kind, milder), (_, stronger) = pairs.versions(0)
    kinds = config.rank_kinds
    stack = trainer.features.degraded(blur_records[0], kinds, range(len(degraded_stack(kinds))))
    assert torch.equal(tokens, stack[[stack_position(kinds, kind, milder), stack_position(kinds, kind, stronger)]].float())
    # level 0 is bank crop 0 (equal up to float16 rounding of two batch sizes)
    assert torch.allclose(stack[0].float(), trainer.features.bank(blur_records[0])[0].float(), atol=1e-2)


def test_protocol_records_the_check_on_test_photos_only(tmp_path, blur_records, monkeypatch):
    dataset = IQADataset("fixture", tmp_path, blur_records, LabelScale(0, 100, True, "MOS"), False)
    split = Split(0, tuple(range(12)), tuple(range(12, 16)))
    checked = []
    original = protocol.degradation_check
    monkeypatch.setattr(protocol, "degradation_check",
                        lambda model, photos, *a, **k: checked.extend(photos) or original(model, photos, *a, kinds=("blur",), **k))
    config = tiny_config(mode="deiqt", epochs=1, val_fraction=0, degradation_photos=2)
    result = protocol.run_split(config, dataset, split, tmp_path / "run", progress=False)
    assert {str(r.path) for r in checked} <= {str(blur_records[i].path) for i in split.test} and len(checked) == 2
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["degradation_check"]["blur"]["pairs"] == 2 * 6 == result["degradation_check"]["blur"]["pairs"]


def test_the_check_from_cached_backbone_outputs_equals_the_full_forward_pass(tmp_path, blur_records):
    from qfm_iqm.training.feature_cache import frozen_backbone_features

    config = tiny_config(mode="deiqt", freeze_backbone=True, model={"multi_stage": True, "stage_grid": 2,
                         "preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "dim": 64, "num_heads": 4})
    trainer = Trainer(config, blur_records[:8], tmp_path, progress=False)
    features = frozen_backbone_features(config, trainer.model, torch.device("cpu"))
    photos = blur_records[8:10]
    full = degradation_check(trainer.model, photos, grid=2, kinds=("gaussian_noise", "blur"))
    cached = degradation_check(trainer.model, photos, grid=2, kinds=("gaussian_noise", "blur"), features=features)
    assert cached == full


def test_the_damage_head_lowers_every_member_alike_and_reads_its_own_projection():
    from qfm_iqm.models.qfm import create_model

    torch.manual_seed(0)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, multi_stage=True,
                         stage_grid=2, damage_head=True).eval()
    crops = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        output = model(crops)
        encoded = model.encode(crops)
        panel = model.decoder(encoded.c, encoded.tokens)
    assert output.damage.shape == (3,) and (output.damage >= 0).all()
    torch.testing.assert_close(output.member_scores, panel.member_scores - output.damage[:, None])
    torch.testing.assert_close(output.spread, panel.spread)
    shared = {id(p) for p in model.damage_head.parameters()} & {id(p) for p in model.proj.parameters()}
    assert not shared


def test_damage_pairs_train_the_damage_head_alone():
    from qfm_iqm.models.qfm import create_model
    from qfm_iqm.training.trainer import ranking_loss

    torch.manual_seed(0)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, damage_head=True)
    pairs = torch.rand(8, 3, 64, 64)  # 2 whole-score pairs, then 2 damage-head pairs
    loss = ranking_loss(model(pairs), whole_pairs=2, margin=10.0)
    head = {name for name, _ in model.damage_head.named_parameters(prefix="damage_head")}
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()], allow_unused=True)
    reached = {name for (name, _), g in zip(model.named_parameters(), grads) if g is not None and g.abs().sum() > 0}
    assert head <= reached and "decoder.head.weight" in reached  # the whole-score pairs reach the panel
    damage_only = ranking_loss(model(pairs[4:]), whole_pairs=0, margin=10.0)
    grads = torch.autograd.grad(damage_only, [p for _, p in model.named_parameters()], allow_unused=True)
    reached = {name for (name, _), g in zip(model.named_parameters(), grads) if g is not None and g.abs().sum() > 0}
    assert reached and reached <= head | {n for n, _ in model.backbone.named_parameters(prefix="backbone")}


@pytest.mark.parametrize("anchor", [False, True])
def test_damage_kinds_need_the_damage_head_and_train_with_their_own_pairs(tmp_path, blur_records, anchor):
    with pytest.raises(ValueError, match="damage_head"):
        tiny_config(rank_weight=1.0, damage_kinds=["jitter"])
    with pytest.raises(ValueError, match="unknown"):
        tiny_config(rank_weight=1.0, damage_kinds=["smudge"], model={"damage_head": True})
    model = {"preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "dim": 64, "num_heads": 4,
             "damage_head": True}
    config = tiny_config(mode="deiqt", rank_weight=1.0, rank_pairs=2, damage_kinds=["jitter", "pixelation"], epochs=1,
                         model=model, damage_anchor=anchor)
    assert config.ranked_kinds == (*TRAINED_KINDS, "jitter", "pixelation")
    trainer = Trainer(config, blur_records[:8], tmp_path, progress=False)
    assert trainer.damage_loader.dataset.kinds == ("jitter", "pixelation")
    before = {n: p.detach().clone() for n, p in trainer.model.damage_head.named_parameters()}
    assert trainer.fit().epochs[-1]["rank"] > 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.damage_head.named_parameters())


@pytest.mark.parametrize("anchor", [False, True])
def test_with_the_anchor_the_labels_fit_the_panel_alone(anchor):
    from qfm_iqm.models.qfm import create_model
    from qfm_iqm.training.trainer import label_scores

    torch.manual_seed(0)
    model = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, damage_head=True)
    output = model(torch.rand(2, 3, 64, 64))
    scores = label_scores(output, anchor)
    torch.testing.assert_close(scores, output.score)  # the value is the score users get either way
    grads = torch.autograd.grad(scores.sum(), list(model.damage_head.parameters()))
    assert all(g.abs().sum() == 0 for g in grads) == anchor
    with pytest.raises(ValueError, match="damage_kinds"):
        tiny_config(rank_weight=1.0, damage_anchor=True, model={"damage_head": True})


def test_the_anchor_weight_scales_the_pull_on_the_clean_crops(tmp_path, blur_records):
    model = {"preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "dim": 64, "num_heads": 4,
             "damage_head": True}
    options = dict(mode="deiqt", rank_weight=1.0, rank_pairs=2, damage_kinds=["jitter"], epochs=1, batch_size=4,
                   model=model, damage_anchor=True)
    rank = []  # one step each, from the same start: the rank loss is hinge + weight * mean penalty
    for weight in (1.0, 2.0, 3.0):
        trainer = Trainer(tiny_config(**options, damage_anchor_weight=weight), blur_records[:4], tmp_path / str(weight),
                          progress=False)
        rank.append(trainer.fit().epochs[-1]["rank"])
    unanchored = Trainer(tiny_config(**{**options, "damage_anchor": False}), blur_records[:4], tmp_path / "off",
                         progress=False).fit().epochs[-1]["rank"]  # the hinge alone, on the same first step
    assert rank[2] > rank[0]
    assert rank[2] - rank[1] == pytest.approx(rank[1] - rank[0], rel=1e-4)  # linear in the weight ...
    assert rank[0] - (rank[1] - rank[0]) == pytest.approx(unanchored, rel=1e-4)  # ... and the hinge is not weighed
    with pytest.raises(ValueError, match="damage_anchor_weight must be > 0"):
        tiny_config(**options, damage_anchor_weight=0.0)
    with pytest.raises(ValueError, match="set damage_anchor: true"):
        tiny_config(**{**options, "damage_anchor": False}, damage_anchor_weight=0.5)


def test_records_named_keeps_the_check_order_and_names_a_missing_photo(tmp_path) -> None:
    from qfm_iqm.data.records import ImageRecord

    records = [ImageRecord(path=tmp_path / name, label=0.5, raw_label=50.0) for name in ("1.png", "2.png", "3.JPG")]
    assert [r.path.name for r in records_named(records, ["3.JPG", "1.png"])] == ["3.JPG", "1.png"]
    with pytest.raises(ValueError, match=r"1 of the check's photos .*first: 9.png"):
        records_named(records, ["1.png", "9.png"])
