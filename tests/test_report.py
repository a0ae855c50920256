"""``qfm-iqm report``: the page of examples/ as headless Chromium renders it, ``--from``, resume and usage errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qfm_iqm.api
import qfm_iqm.scoring
from qfm_iqm.cli.main import main
from qfm_iqm.scoring import settings_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)"
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Cards(HTMLParser):
    """The cards of a rendered page: ``data-path`` -> the text of its score (scored) or reason (failed)."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.urls: list[str] = []
        self._card: str | None = None
        self._into: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.urls += [value for key, value in attrs if key in ("src", "href") and value]
        classes = (attributes.get("class") or "").split()
        if tag == "article" and "card" in classes:
            self._card = attributes["data-path"]
        elif self._card is not None and ("score" in classes or "reason" in classes):
            self._into = self.scored if "score" in classes else self.failed

    def handle_data(self, data: str) -> None:
        if self._into is not None:
            self._into[self._card] = data
            self._into = None


def _chromium(profile: Path, *arguments: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def _page_data(page: Path) -> dict:
    """The JSON the page is drawn from."""
    text = page.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[dict]:
    """examples/ plus an unreadable file, scored once by ``score -o`` and once by ``report`` (torch runtime)."""
    root = tmp_path_factory.mktemp("report")
    photos = shutil.copytree(EXAMPLES, root / "photos", ignore=shutil.ignore_patterns("*.py", "*.md"))
    (photos / "broken.jpg").write_bytes(b"not an image")
    scores = root / "scores.csv"
    assert main(["score", str(photos), "-o", str(scores), "--runtime", "torch", "--quiet"]) == 1
    page = root / "report.html"
    assert main(["report", str(photos), "-o", str(page), "--flag-below", "40", "--runtime", "torch", "--quiet"]) == 1
    with open(scores, newline="", encoding="utf-8") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    yield {"root": root, "photos": photos, "scores": scores, "page": page, "rows": rows}


@needs_chromium
def test_chromium_renders_a_card_per_photo_with_the_score_of_score(run: dict) -> None:
    rows, page = run["rows"], run["page"]
    assert len(rows) == 6 and sum(bool(row["error"]) for row in rows.values()) == 1
    cards = _Cards()
    cards.feed(_chromium(run["root"] / "profile", "--dump-dom", page.as_uri()))
    assert cards.scored == {name: f"{float(row['score']):.1f}" for name, row in rows.items() if row["score"]}
    assert cards.failed == {"broken.jpg": rows["broken.jpg"]["error"]}
    assert cards.urls and all(":" not in url for url in cards.urls)  # relative links only: nothing fetched
    assert "default-src 'none'" in page.read_text(encoding="utf-8")

    shot = run["root"] / "shot.png"
    _chromium(run["root"] / "profile", "--hide-scrollbars", "--window-size=1000,800", "--virtual-time-budget=3000",
              f"--screenshot={shot}", page.as_uri())
    assert np.asarray(Image.open(shot).convert("L"), dtype=np.float32).std() > 20


def test_report_from_a_score_file_scores_nothing_and_draws_maps(run: dict, monkeypatch, capsys) -> None:
    root = run["root"]

    def no_scoring(*args, **kwargs):
        raise AssertionError("--from must not score")

    monkeypatch.setattr(qfm_iqm.scoring, "score_files", no_scoring)
    monkeypatch.setattr(qfm_iqm.api.Scorer, "score_crops", no_scoring)
    page = root / "from.html"
    assert main(["report", "--from", str(run["scores"]), "-o", str(page), "--maps", "--runtime", "torch", "--quiet"]) == 1
    data = _page_data(page)
    photos = {photo["name"]: photo for photo in data["photos"]}
    assert {name: photo["text"] for name, photo in photos.items()} == {
        name: f"{float(row['score']):.1f}" if row["score"] else None for name, row in run["rows"].items()
    }
    assert photos["broken.jpg"]["error"] == run["rows"]["broken.jpg"]["error"] and "thumb" not in photos["broken.jpg"]
    assert data["scale"] == {"low": 0.0, "high": 100.0, "name": "MOS", "higherIsBetter": True} and data["coverage"] == 0.9
    sharp = photos["sharp.jpg"]
    thumb, overlay = (Image.open(page.parent / photo_url) for photo_url in (sharp["thumb"], sharp["map"]))
    assert thumb.size == overlay.size == (sharp["width"], sharp["height"]) and max(thumb.size) == 320
    assert np.abs(np.asarray(thumb, np.float32) - np.asarray(overlay, np.float32)).mean() > 5

    one = root / "one.html"
    assert main(["report", str(run["photos"] / "sharp.jpg"), "--from", str(run["scores"]), "-o", str(one), "--quiet"]) == 0
    assert [photo["name"] for photo in _page_data(one)["photos"]] == ["sharp.jpg"]
    capsys.readouterr()
    stranger = root / "stranger.png"
    Image.new("RGB", (32, 32)).save(stranger)
    assert main(["report", str(stranger), "--from", str(run["scores"]), "-o", str(root / "x.html"), "--quiet"]) == 2
    assert "1 of the 1 inputs have no row in" in capsys.readouterr().err


def test_resume_keeps_the_scores_of_the_page_before(run: dict, monkeypatch) -> None:
    def no_scoring(*args, **kwargs):
        raise AssertionError("every photo was scored before")

    monkeypatch.setattr(qfm_iqm.api.Scorer, "score_crops", no_scoring)
    page = run["page"]
    before = _page_data(page)["photos"]
    page.unlink()
    assert main(["report", str(run["photos"]), "-o", str(page), "--resume", "--runtime", "torch", "--quiet"]) == 1
    assert _page_data(page)["photos"] == before


def _scores_of_another_model(tmp_path: Path) -> Path:
    scores = tmp_path / "other.csv"
    scores.write_text("path,score,low,high,uncertainty,error\na.jpg,50,40,60,0.1,\n")
    settings = {"format": "qfm-iqm-scores/1", "settings": {"model": "qfm-iqm-lite0-livec", "grid": 3}, "base": "/"}
    settings_path(scores).write_text(json.dumps(settings))
    return scores


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["EXAMPLES", "-o", "report.txt"], "ending in .html"),
        (["-o", "r.html"], "give the images to score"),
        (["--from", "missing.csv", "-o", "r.html"], "missing.csv: no such file"),
        (["--from", "bad.csv", "-o", "r.html"], "not a file of scores"),
        (["--from", "bad.txt", "-o", "r.html"], "a file of scores ends in .csv"),
        (["--from", "other.csv", "-o", "r.html"], "holds scores of the model qfm-iqm-lite0-livec: add --model"),
        (["--from", "other.csv", "-o", "r.html", "--resume"], "with --from nothing is scored"),
        (["EXAMPLES", "-o", "r.html", "--flag-below", "120"], "outside the score scale 0-100"),
        (["EXAMPLES", "-o", "old.html"], "old.html exists: add --overwrite"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_the_model_loads(
    arguments: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(qfm_iqm.api, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text("name,quality\na.jpg,50\n")
    (tmp_path / "old.html").write_text("<p>an older page</p>")
    _scores_of_another_model(tmp_path)
    assert main(["report", *[str(EXAMPLES) if a == "EXAMPLES" else a for a in arguments]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "old.html").read_text() == "<p>an older page</p>" and not (tmp_path / "r_files").exists()


def test_a_folder_without_images_is_refused_and_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    assert "error: no images found in" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["empty"]
