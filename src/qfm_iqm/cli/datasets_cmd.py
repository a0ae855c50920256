"""``qfm-iqm datasets``: list the registered datasets, or load one download and summarise it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qfm_iqm.data.records import IQADataset


def parse_dataset_options(pairs: Sequence[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings -> a dict of loader options (values stay text; loaders convert them)."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"dataset option {pair!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def add_dataset_option_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--dataset-option KEY=VALUE`` (read with ``parse_dataset_options``)."""
    parser.add_argument(
        "--dataset-option",
        dest="dataset_options",
        action="append",
        metavar="KEY=VALUE",
        help="a loader option, e.g. score=MOS (repeatable; `qfm-iqm datasets` lists them)",
    )


def summarize_dataset(dataset: IQADataset) -> str:
    """A few lines: size, kind, label range and direction, references, official split, resize rule."""
    raw = dataset.raw_labels()
    labelled = raw[~np.isnan(raw)]
    lines = [f"{dataset.name}: {len(dataset)} images under {dataset.root}"]
    if len(labelled):
        direction = "higher is better" if dataset.scale.higher_is_better else "lower is better"
        lines.append(
            f"labels: {dataset.scale.name} {labelled.min():g}..{labelled.max():g} on scale "
            f"{dataset.scale.low:g}..{dataset.scale.high:g} ({direction}; normalised labels are higher-better)"
        )
    else:
        lines.append("labels: none (unlabelled)")
    if dataset.synthetic:
        lines.append(f"reference contents: {len({r.ref_id for r in dataset.records})}")
    if dataset.official_split:
        lines.append("official split: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.official_split.items()))
    if dataset.resize_short_side:
        lines.append(f"resize rule: shorter side to {dataset.resize_short_side} px")
    return "\n".join(lines)


def _datasets(args: argparse.Namespace) -> int:
    from qfm_iqm.data.registry import describe_datasets, load_dataset

    if args.dataset is None:
        print(describe_datasets())
        return 0
    options: dict[str, Any] = parse_dataset_options(args.dataset_options)
    print(summarize_dataset(load_dataset(args.dataset, args.data_root, **options)))
    return 0


def add_datasets_command(subparsers: Any) -> None:
    """Register ``datasets [NAME --data-root DIR]`` on the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "datasets",
        help="list the datasets and the files each expects, or check a download",
        description="Without NAME: list the registered datasets. With NAME: load the download at "
        "--data-root with the same checks as train/evaluate and summarise it.",
    )
    parser.add_argument("dataset", nargs="?", metavar="NAME", help="dataset to load and summarise")
    parser.add_argument("--data-root", dest="data_root", type=Path, help="unpacked official download")
    add_dataset_option_argument(parser)
    parser.set_defaults(func=_datasets)
