import argparse
from pathlib import Path

import pytest
from dataset_fixtures import tiny_image, write_csv

from qfm_iqm.cli.datasets_cmd import add_datasets_command, parse_dataset_options
from qfm_iqm.data.records import DatasetError, ImageRecord, IQADataset, LabelScale
from qfm_iqm.data.registry import describe_datasets, list_datasets
from qfm_iqm.data.splits import official_split

ALL = ["csiq", "csv", "folder", "kadid10k", "koniq10k", "live", "livec", "livefb", "spaq", "tid2013"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_datasets_command(parser.add_subparsers(dest="name", required=True))
    return parser


def test_every_dataset_registered_and_described() -> None:
    infos = list_datasets()
    assert [i.name for i in infos] == ALL
    assert all(i.kind and i.expects and i.source for i in infos)
    text = describe_datasets()
    for info in infos:
        assert any(line.startswith(info.name + " ") for line in text.splitlines())
    assert "options: dmos" in text and "dmos_realigned.mat" in text


def test_datasets_command_lists_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["datasets"])
    assert args.func(args) == 0
    assert "koniq10k" in capsys.readouterr().out
    for i in range(4):
        tiny_image(tmp_path / f"{i}.png")
    write_csv(
        tmp_path / "labels.csv",
        ["image", "score", "set"],
        [[f"{i}.png", 1 + i, ["train", "test"][i % 2]] for i in range(4)],
    )
    argv = ["datasets", "csv", "--data-root", str(tmp_path), "--dataset-option", "low=0",
            "--dataset-option", "high=5", "--dataset-option", "split-column=set"]  # fmt: skip
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "labels: 4 images" in out and "score 1..4 on scale 0..5 (higher is better" in out
    assert "official split: train 2, val 0, test 2" in out


def test_parse_dataset_options() -> None:
    assert parse_dataset_options(["a=1", "split-column = set", "x="]) == {"a": "1", "split_column": "set", "x": ""}
    assert parse_dataset_options(None) == {}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_dataset_options(["novalue"])


def test_official_split_needs_two_parts() -> None:
    records = [ImageRecord(path=Path(f"/x/{i}.png"), label=0.5, raw_label=0.5) for i in range(4)]
    ds = IQADataset(
        "x", Path("/x"), records, LabelScale(0, 1, True, "MOS"), False, official_split={"train": (0, 1, 2, 3)}
    )
    with pytest.raises(DatasetError, match="needs a training part and a test or validation part"):
        official_split(ds)
    ds.official_split = {"train": (0, 1), "val": (1, 2)}
    with pytest.raises(DatasetError, match="indices in both train and test"):
        official_split(ds)
