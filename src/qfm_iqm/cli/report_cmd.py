"""``qfm-iqm report``: score images (or read a ``score`` run's file) into one HTML page (:mod:`qfm_iqm.report`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPORT_HELP = """Write a quality report: one HTML page with a gallery of the photos sorted by score (worst
first; switchable), each with its score, its calibrated range and the panel's spread drawn on the
score scale, its quality map on demand (--maps), a histogram of the scores, a threshold filter
(--flag-below sets its start) and a card with the reason for each input that could not be scored.

The page holds its styles, script and data and fetches nothing from the network; thumbnails (and map
overlays) go to the folder PAGE_files/ beside it. Keep the two together to move or share the report.

PATH...: images are found and scored exactly as qfm-iqm score does (same options); the scores go to
PAGE_files/scores.csv, and --resume continues an interrupted report there. --from FILE builds the page
from the .csv/.json/.jsonl of a score -o run instead, without scoring (PATH... then picks its rows).
Exit status: 0 every photo scored, 1 some inputs were not scored (they get error cards), 2 usage
error (checked before the model loads), 130/143 stopped while scoring."""


def _checked_page(page: Path, replace: bool) -> None:
    if page.suffix.lower() != ".html":
        raise ValueError(f"-o {page}: the report is a page: give a file name ending in .html")
    if page.is_dir():
        raise ValueError(f"-o {page} is a folder; give a file name ending in .html")
    if page.exists() and not replace:
        raise ValueError(f"{page} exists: add --overwrite to replace it, or --resume to finish its scoring")


def _model_name(name: str) -> str:
    """How a score file's settings name a model (as ``qfm-iqm score`` records it)."""
    from qfm_iqm.inference.pretrained import release_name

    return release_name(name) or str(Path(name).resolve())


def _report(args: argparse.Namespace, score: Callable[[argparse.Namespace], int]) -> int:
    from qfm_iqm.data.images import set_max_image_pixels
    from qfm_iqm.inference.pretrained import read_checkpoint_json, resolve_model, score_scale
    from qfm_iqm.report import files_folder, read_scores, select_rows, write_report
    from qfm_iqm.scoring import find_images
    from qfm_iqm.utils.distributed import is_main

    page = args.output
    _checked_page(page, args.overwrite or args.resume)
    if args.source is None and not args.paths:
        raise ValueError("give the images to score (PATH...), or --from the file of a qfm-iqm score -o run")
    if args.source is not None and args.resume:
        raise ValueError("--resume continues scoring; with --from nothing is scored")
    scores = read_scores(args.source) if args.source is not None else None
    recorded = scores.settings.get("model") if scores is not None and scores.settings else None
    if recorded and _model_name(args.model) != recorded:
        raise ValueError(f"{args.source} holds scores of the model {recorded}: add --model {recorded}")
    info = read_checkpoint_json(resolve_model(args.model))
    scale = score_scale(info)
    if args.flag_below is not None and not scale.low <= args.flag_below <= scale.high:
        raise ValueError(f"--flag-below {args.flag_below} is outside the score scale {scale.low:g}-{scale.high:g}")
    code = 0
    if scores is None:
        scores_file = files_folder(page) / "scores.csv"
        scores_file.parent.mkdir(parents=True, exist_ok=True)
        code = score(argparse.Namespace(**{**vars(args), "output": scores_file, "map": None}))
        if code not in (0, 1):
            with contextlib.suppress(OSError):  # the folder goes only if the run left nothing in it
                scores_file.parent.rmdir()
            return code
        scores = read_scores(scores_file)
    if args.paths:
        files, warnings = find_images(args.paths, args.recursive)
        if args.source is not None:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
        rows = select_rows(scores, files)
        if not rows:
            raise ValueError(f"no images found in {' '.join(args.paths)}")
    else:
        rows = scores.rows
    if not is_main():
        return code
    previous_limit = set_max_image_pixels(args.max_pixels or None) if args.max_pixels is not None else None
    try:
        scorer = None
        if args.maps:  # quality maps need the eager model
            from qfm_iqm.api import load_model

            scorer = load_model(args.model, args.device, args.grid, args.runtime, native=args.native)
        write_report(page, rows, scores.base, scale, model=args.model, coverage=info.get("interval", {}).get("coverage"),
                     flag_below=args.flag_below, scorer=scorer, command=args.command_line, progress=not args.quiet)
    finally:
        if args.max_pixels is not None:
            set_max_image_pixels(previous_limit)
    failed = sum(row.error is not None for row in rows)
    print(f"report written to {page} ({len(rows)} photos, {failed} not scored; thumbnails in {files_folder(page)})",
          file=sys.stderr)
    return 1 if failed else 0


def add_report_command(
    commands: argparse._SubParsersAction,
    add_scoring_options: Callable[[argparse.ArgumentParser], None],
    score: Callable[[argparse.Namespace], int],
) -> None:
    """Register ``qfm-iqm report``; it takes ``score``'s options (``add_scoring_options``) and scores
    through ``score``, the handler of ``qfm-iqm score``."""
    parser = commands.add_parser("report", help="an HTML page of the photos sorted by score, with maps and errors",
                                 description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image file, folder or glob pattern (with --from: report only these of its rows)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="PAGE.html", help="the report page")
    parser.add_argument("--from", dest="source", type=Path, metavar="SCORES",
                        help="build the page from this .csv/.json/.jsonl of qfm-iqm score -o; nothing is scored")
    parser.add_argument("--flag-below", dest="flag_below", type=float, metavar="SCORE",
                        help="flag photos scoring below SCORE (the page's threshold starts there)")
    parser.add_argument("--maps", action=argparse.BooleanOptionalAction, default=False,
                        help="draw each photo's quality map, shown on demand (default: no; runs the model once more "
                        "per photo)")
    add_scoring_options(parser)
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier or interrupted report of the same page: keep its scores and score "
                          "only the other inputs")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing page (and its scores)")
    parser.set_defaults(func=partial(_report, score=score))
