"""benchmarks/paper.yaml, the paper's table: what it runs, and a CPU dry run of the same config (a tiny
random ViT, miniature datasets in their official formats, 1 epoch, 2 splits) that writes the table with
the published medians beside its own."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import timm

from dataset_fixtures import make_livec
from qfm_iqm.experiments.benchmark.config import BenchmarkConfig
from qfm_iqm.experiments.benchmark.runner import run_benchmark
from qfm_iqm.cli.main import main
from qfm_iqm.data.live import LIVE_N_ENTRIES
from qfm_iqm.models.backbones import Backbone, list_backbones, register_backbone
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.trainer import Trainer
from test_datasets_csiq import make_csiq
from test_datasets_kadid10k import make_kadid
from test_datasets_koniq10k import make_koniq
from test_datasets_live import make_live
from test_datasets_livefb import make_livefb
from test_datasets_spaq import make_spaq
from test_datasets_tid2013 import make_tid2013

pytestmark = pytest.mark.usefixtures("one_thread")
PROJECT = Path(__file__).parents[1]
EIGHT = {"live", "csiq", "tid2013", "kadid10k", "livec", "koniq10k", "spaq", "livefb"}
DRY_RUN_VIT = "paper_dry_run_vit"
DRY_RUN = ["device=cpu", "epochs=1", "batch_size=4", "kd_views=2", "eval_grid=1", f"model.backbone={DRY_RUN_VIT}",
           "model.dim=32", "model.num_heads=2", "model.preprocessing={input_size: 32, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}"]

if DRY_RUN_VIT not in list_backbones():

    @register_backbone(DRY_RUN_VIT)
    def _dry_run_vit(pretrained: bool, weights_path: Path | None) -> Backbone:
        """One transformer block on 32-px crops (4 patches), random weights: the ViT code path, at no cost."""
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1,
                                  embed_dim=32, num_heads=2)
        return Backbone(model, DRY_RUN_VIT, "vit", (0.5,) * 3, (0.5,) * 3)


def make_small_live(root: Path, kept: int = 40) -> Path:
    """The LIVE fixture with all but ``kept`` of its 982 entries flagged as originals (which the loader
    drops, as it drops the release's originals): the official files, a few dozen images of 5 contents."""
    make_live(root)
    dmos = scipy.io.loadmat(root / "dmos.mat")["dmos"]
    orgs = np.ones((1, LIVE_N_ENTRIES))
    orgs[0, np.linspace(1, LIVE_N_ENTRIES - 1, kept).astype(int)] = 0
    scipy.io.savemat(root / "dmos.mat", {"dmos": dmos, "orgs": orgs})
    return root


# every test part holds at least 3 images (what correlations need): 16 or 15 authentic images, 3-5 contents
FIXTURES = {"live": make_small_live, "csiq": make_csiq, "tid2013": make_tid2013, "kadid10k": make_kadid,
            "livec": partial(make_livec, names=[f"t{i}.bmp" for i in range(1, 8)] + [f"{100 + i}.bmp" for i in range(15)]),
            "koniq10k": partial(make_koniq, n=16), "spaq": partial(make_spaq, n=16), "livefb": partial(make_livefb, extra=4)}


@pytest.fixture(scope="module")
def paper() -> BenchmarkConfig:
    return BenchmarkConfig.from_file(PROJECT / "benchmarks" / "paper.yaml")


def test_the_paper_config_runs_the_papers_table(paper: BenchmarkConfig) -> None:
    assert {d.name for d in paper.datasets} == EIGHT and all(d.root is None for d in paper.datasets)
    assert paper.seeds == tuple(range(10))
    assert {(c.train, c.test) for c in paper.cross} == {("livec", "koniq10k"), ("koniq10k", "livec"), ("live", "csiq"), ("csiq", "live")}
    methods = {m.name: m.train_config(paper.train) for m in paper.methods}
    assert set(methods) == {"qfm", "deiqt"}
    assert methods["qfm"].use_noise and methods["qfm"].distill and methods["qfm"].teacher == "pretrained"
    assert not methods["deiqt"].use_noise and not methods["deiqt"].distill
    recipe = TrainConfig.from_file(PROJECT / "configs" / "paper_recipe.yaml")
    assert recipe.model.backbone == "deit3_small_patch16_224"
    for config in methods.values():  # the recipe of configs/paper_recipe.yaml, trained on the whole 80%
        assert dataclasses.replace(config, mode=recipe.mode, teacher=recipe.teacher, val_fraction=recipe.val_fraction,
                                   degradation_photos=recipe.degradation_photos) == recipe
    # spec section 6: the published medians, every one of them
    published = {m.name: m.published for m in paper.methods}
    assert published["qfm"]["livec"] == {"srcc": 0.891, "plcc": 0.913} and published["qfm"]["tid2013"] == {"plcc": 0.932}
    assert published["deiqt"]["livefb"] == {"srcc": 0.571, "plcc": 0.663}
    assert sum(len(metrics) for p in published.values() for metrics in p.values()) == 11 + 14
    assert set(published["qfm"]) == set(published["deiqt"]) == EIGHT - {"kadid10k"}


def test_a_cpu_dry_run_of_the_paper_config_writes_the_table(paper: BenchmarkConfig, tmp_path: Path) -> None:
    roots = {name: make(tmp_path / "data" / name) for name, make in FIXTURES.items()}
    dry = dataclasses.replace(paper, seeds=(0, 1),
                              datasets=tuple(dataclasses.replace(d, root=str(roots[d.name])) for d in paper.datasets))
    outcome = run_benchmark(dry, tmp_path / "out", DRY_RUN, progress=False)
    assert outcome.failures == []
    assert all(len(cell["runs"]) == 2 for cell in outcome.cells.values()) and len(outcome.cells) == 16
    assert len(outcome.cross) == 8 and all(outcome.cross.values())
    table = (tmp_path / "out" / "table.md").read_text()
    section = table.split("## Published medians beside ours")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| dataset")]
    assert len(rows) == 16
    livec = next(row for row in rows if row.startswith("| livec | QFM-IQM"))
    ours = outcome.cells["livec", "qfm"]["summary"]
    assert livec.split(" | ")[2:] == ["0.891", f"{ours['srcc']['median']:.4f}", "0.913", f"{ours['plcc']['median']:.4f} |"]
    kadid = next(row for row in rows if row.startswith("| kadid10k | DEIQT"))
    assert kadid.split(" | ")[2] == "–" and kadid.split(" | ")[4] == "–"


@pytest.mark.parametrize(("published", "message"), [
    ({"koniq10k": {"srcc": 0.9}}, "not listed under 'datasets': koniq10k"),
    ({"livec": {"srcc": 1.5}}, "srcc must be a number in \\[-1, 1\\], got 1.5"),
    ({"livec": {"krcc": 0.7}}, "unknown key\\(s\\) krcc"),
])
def test_published_numbers_are_checked(published: dict, message: str) -> None:
    config = {"name": "x", "datasets": ["livec"], "methods": [{"name": "qfm", "train": {"mode": "qfm"}, "published": published}]}
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig.from_dict(config)


def test_a_signal_stops_the_whole_benchmark_and_the_same_command_continues(tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGTERM (a SLURM time limit) saves the training state and ends the benchmark, rather than failing
    one cell and starting the next."""
    root = FIXTURES["livec"](tmp_path / "livec")
    config = tmp_path / "bench.yaml"
    config.write_text(f"name: stop\nseeds: [0]\ntrain: {{val_fraction: 0}}\ndatasets: [{{name: livec, root: '{root}'}}]\n"
                      "methods: [{name: first, train: {mode: deiqt}}, {name: second, train: {mode: deiqt}}]\n")
    arguments = ["--quiet", "benchmark", "--config", str(config), "--output", str(tmp_path / "out")]
    arguments += [word for option in DRY_RUN for word in ("--set", option)]
    original, sent = Trainer.training_step, []

    def sigterm_once(self, *args, **kwargs):
        if (self.epoch, self.step) == (0, 1) and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", sigterm_once)
    assert main(arguments) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert (tmp_path / "out" / "livec" / "first" / "split_0" / "train_state").exists()
    assert not (tmp_path / "out" / "livec" / "second").exists()
    assert main(arguments) == 0
    assert json.loads((tmp_path / "out" / "livec" / "second" / "results.json").read_text())["runs"][0]["seed"] == 0
