"""Loader for the KonIQ-10k image quality database (official layout)."""

from __future__ import annotations

from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    Table,
    check_nonempty,
    check_scores,
    check_unique,
    find_file,
    make_records,
    option_choice,
    parts_to_split,
    read_csv,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

SCORES_FILE = "koniq10k_scores_and_distributions.csv"
SETS_FILE = "koniq10k_distributions_sets.csv"
KONIQ_RATED_SIDE = 768  # the released 1024x768 images, as rated
IMAGE_FOLDERS = ("1024x768", "512x384")
# score -> its scale: MOS_zscore is the rescaled z-score MOS (0..100) the field reports, MOS the mean of
# the 1..5 ratings
KONIQ_SCALES = {
    "MOS_zscore": LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS_zscore"),
    "MOS": LabelScale(low=1.0, high=5.0, higher_is_better=True, name="MOS"),
}
# label file -> score -> the column holding it: the sets file's MOS column is on the MOS_zscore scale
SCORE_COLUMNS = {
    SCORES_FILE: {"MOS_zscore": "MOS_zscore", "MOS": "MOS"},
    SETS_FILE: {"MOS_zscore": "MOS"},
}


def _score_column(table: Table, score: str) -> int:
    """Index of the column holding ``score`` in the label file ``table`` (scores or sets file)."""
    columns = SCORE_COLUMNS[table.path.name]
    if score not in columns:
        raise DatasetError(
            f"{table.path}: has no {score} column (its MOS column is on the 0..100 MOS_zscore scale); "
            f"the 1..5 MOS is only in {SCORES_FILE}: add that file or use score=MOS_zscore"
        )
    return table.column([columns[score]], score)


def _official_split(names: list[str], sets: Table) -> dict[str, tuple[int, ...]]:
    """Part per image from the ``set`` column of the sets file, joined on ``image_name``."""
    listed = sets.texts(sets.column(["image_name"], "image name"))
    check_unique(listed, str(sets.path))
    part_of = dict(zip(listed, sets.values(sets.column(["set"], "split"))))
    unlisted = [n for n in names if n not in part_of]
    if unlisted:
        raise DatasetError(offenders_message(f"{sets.path}: images missing from the split file", unlisted))
    extra = sorted(set(part_of) - set(names))
    if extra:
        raise DatasetError(offenders_message(f"{sets.path}: images not in the score file", extra))
    return parts_to_split(names, [part_of[n] for n in names], str(sets.path))


@register_dataset(
    "koniq10k",
    expects=f"{SCORES_FILE} (and/or {SETS_FILE}) and 1024x768/ or 512x384/",
    source="KonIQ-10k IQA database, MMSP group, Univ. of Konstanz",
    kind="authentic, 10,073 images, MOS_zscore 0..100 (or MOS 1..5; higher is better), official split",
)
def load_koniq10k(root: str | Path, *, images: str = "auto", score: str = "MOS_zscore") -> IQADataset:
    """Load KonIQ-10k's 10,073 images.

    Labels come from ``koniq10k_scores_and_distributions.csv``, else ``koniq10k_distributions_sets.csv``
    (either at the root or in ``metadata/``). ``score``: ``MOS_zscore`` (0..100, default; the sets
    file's ``MOS`` column holds it) or ``MOS`` (1..5, scores file only). ``images``: ``1024x768``,
    ``512x384`` or ``auto`` (the first of these folders present). The official split comes from the
    ``set`` column of ``koniq10k_distributions_sets.csv`` when that file is present
    (``training``/``validation``/``test``).
    """
    root = Path(root)
    score_name = option_choice(score, tuple(KONIQ_SCALES), "score")
    scale = KONIQ_SCALES[score_name]
    folder = option_choice(images, ("auto", *IMAGE_FOLDERS), "images")
    if folder == "auto":
        folder = next((f for f in IMAGE_FOLDERS if (root / f).is_dir()), " or ".join(IMAGE_FOLDERS))
    if not (root / folder).is_dir():
        raise DatasetError(f"KonIQ-10k image folder missing: {root}/{folder}")
    meta = [root, root / "metadata"]
    table = read_csv(find_file(meta, [SCORES_FILE, SETS_FILE], "KonIQ-10k label file"))
    where = str(table.path)
    names = table.texts(table.column(["image_name"], "image name"))
    check_nonempty(names, where)
    check_unique(names, where)
    raw = check_scores(names, table.values(_score_column(table, score_name)), where, scale.low, scale.high)
    stds = None
    if score_name == "MOS" and (sd := table.find_column(["SD"])) is not None:
        stds = check_scores(names, table.values(sd), where, 0.0, None)
    sets_path = next((m / SETS_FILE for m in meta if (m / SETS_FILE).is_file()), None)
    split = None
    if sets_path is not None:
        split = _official_split(names, table if sets_path == table.path else read_csv(sets_path))
    paths = resolve_images(ImageFinder([root / folder]), names, f"KonIQ-10k images listed in {table.path.name}")
    records = make_records(paths, raw, scale, stds=stds)
    return IQADataset(name="KonIQ-10k", root=root, records=records, scale=scale, synthetic=False, official_split=split,
                      rated_short_side=KONIQ_RATED_SIDE)
