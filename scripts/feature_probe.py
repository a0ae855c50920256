"""Do a model's frozen backbone features carry a damage step, and does the damage its head was ranked on
point the way to the damage it was not? Linear probes on the features.

    python scripts/feature_probe.py qfm-iqm-lite0-livec-v2-2 --data-root ../shared/datasets/livec \
        --exclude results/release/qfm_iqm_lite0_livec_v2_2/degradation_check.json \
        --output results/release/qfm_iqm_lite0_livec_v2_2/feature_probe.json

A degradation check says whether a trained head orders a step; these probes say what a linear read of
the frozen features could do. ``--photos`` seeded LIVEC photos (their labels are not read; photos named in
the ``--exclude`` check are left out) are damaged as in training, at the model's viewing scale, and
described by the backbone's tokens: per channel, their mean and standard deviation over the positions of
every crop of the evaluation grid. A probe is a ridge regression of feature differences (milder minus
stronger) onto +1, with no intercept, so that it orders a pair the same whichever side is listed first;
its penalty is chosen by an inner cross-validation over photos, and it is read on the photos of outer
folds it did not fit. Three probes:

- **per step**: fitted to one step of one of ``--kinds``, read on the same step: does the information exist?
- **transfer**: fitted to every step of ``--fit-kinds`` (by default the kinds the model's damage head was
  ranked on, its ``damage_kinds``), read on each step of ``--kinds``: does the ranked damage point the way
  to this one?
- **control**: fitted to a change that is no damage (each photo against its mirror image): a probe that
  orders it finds an order where none exists.

The features are cached in ``--cache``: a file per backbone (weights and preprocessing), crop grid and photo
names, holding every kind computed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

from qfm_iqm.data.degradations import check_kinds, damaged_view, levels
from qfm_iqm.data.images import load_image
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.transforms import grid_crops
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.inference.predict import model_preprocessing
from qfm_iqm.inference.pretrained import resolve_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write, atomic_write_json
from qfm_iqm.utils.seeds import path_seed

FEATURES_VERSION = 1  # change whenever cached features would be computed differently (pooling, damage, crops)
PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # times the mean squared norm of the scaled differences
MIRROR = "mirror"  # the control's name among the cached versions


def folds(count: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` indices shuffled and cut into ``parts`` folds of near-equal size."""
    return np.array_split(rng.permutation(count), parts)


def fit_probe(differences: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge weights mapping each difference to +1 (and so its negative to -1), solved in the dual: few
    differences, many features."""
    gram = differences @ differences.T
    scale = penalty * np.trace(gram) / len(differences)
    return differences.T @ np.linalg.solve(gram + scale * np.eye(len(differences)), np.ones(len(differences)))


def fit_scaled_probe(train: np.ndarray, penalty: float) -> np.ndarray:
    """Probe weights on raw differences: each feature is scaled by its root mean square on ``train`` (not
    centred: a difference and its negative are both data) before the ridge fit."""
    scale = np.sqrt(np.mean(train**2, axis=0)) + 1e-9
    return fit_probe(train / scale, penalty) / scale


def ordered_share(train: np.ndarray, test: np.ndarray, penalty: float) -> float:
    """Share of ``test`` differences the probe fitted on ``train`` puts on the milder side."""
    return share_ordered(test, fit_scaled_probe(train, penalty))


def share_ordered(differences: np.ndarray, weights: np.ndarray) -> float:
    return float(np.mean(differences @ weights > 0))


def cross_validated(fit_on: np.ndarray, read_on: list[np.ndarray], outer: int, inner: int, seed: int) -> dict:
    """Nested cross-validation over photos. ``fit_on`` (photos, differences per photo, features) trains the
    probe; its penalty is chosen on inner folds of each outer training part by how well it orders
    ``fit_on``'s held-out photos; each array of ``read_on`` (photos, features) is then read on the outer
    fold's photos. Returns the share ordered right per array of ``read_on`` and the penalties chosen."""
    rng = np.random.default_rng(seed)
    shares, chosen = [], []
    for test in folds(len(fit_on), outer, rng):
        train = np.setdiff1d(np.arange(len(fit_on)), test)
        inner_folds = folds(len(train), inner, rng)

        def inner_share(penalty: float) -> float:
            return float(np.mean([ordered_share(_rows(fit_on[np.delete(train, part)]), _rows(fit_on[train[part]]), penalty)
                                  for part in inner_folds]))

        penalty = max(PENALTIES, key=inner_share)
        weights = fit_scaled_probe(_rows(fit_on[train]), penalty)  # fitted once, read on every array
        shares.append([share_ordered(read[test], weights) for read in read_on])
        chosen.append(penalty)
    return {"ordered": [round(float(share), 4) for share in np.mean(shares, axis=0)], "penalties": chosen}


def _rows(differences: np.ndarray) -> np.ndarray:
    return differences.reshape(-1, differences.shape[-1])


@torch.inference_mode()
def describe(model, view, pre, grid: int) -> np.ndarray:
    """Per channel, the mean and standard deviation of the backbone's tokens over all positions of all crops."""
    _, tokens = model.backbone(grid_crops(view, pre, grid))
    tokens = tokens.reshape(-1, tokens.shape[-1]).double()
    return torch.cat([tokens.mean(0), tokens.std(0)]).numpy()


def features(model, pre, grid: int, records, kinds: list[str], cache: Path) -> dict[str, np.ndarray]:
    """``{kind: (photos, levels + 1, features)}`` with the original as level 0, and the mirror control
    ``{MIRROR: (photos, 2, features)}``. ``cache`` keeps every kind computed for these photos; only the
    kinds it lacks are computed (and added to it)."""
    stored: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as archive:
            stored = {name: archive[name] for name in archive.files}
    missing = [name for name in [MIRROR, *kinds] if name not in stored]
    if not missing:
        return stored
    versions: dict[str, list[np.ndarray]] = {name: [] for name in missing}
    for record in records:
        image, seed = load_image(record.path), path_seed(record.path)
        view = damaged_view(image, pre, None, 0, seed)
        original = describe(model, view, pre, grid)
        for name in missing:
            if name == MIRROR:
                others = [describe(model, ImageOps.mirror(view), pre, grid)]
            else:
                others = [describe(model, damaged_view(image, pre, name, level, seed), pre, grid)
                          for level in range(1, levels(name) + 1)]
            versions[name].append(np.stack([original, *others]))
    stored.update({name: np.stack(rows) for name, rows in versions.items()})

    def write(path: Path) -> None:
        with path.open("wb") as file:
            np.savez(file, **stored)

    atomic_write(cache, write)  # an interrupted run leaves no broken cache
    return stored


def cache_key(model, grid: int, photos: list[str]) -> str:
    """A cache file name for features of ``model``'s backbone (its weights and preprocessing) on ``photos``
    (their names), cut into a ``grid x grid`` crop grid."""
    digest = hashlib.sha256(json.dumps([FEATURES_VERSION, model.config.preprocessing, grid, photos]).encode())
    for tensor in model.backbone.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def steps(stack: np.ndarray) -> list[np.ndarray]:
    """Per strength step, the (photos, features) differences milder minus stronger."""
    return [stack[:, step - 1] - stack[:, step] for step in range(1, stack.shape[1])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="released model name or checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--kinds", nargs="+", default=["colour_diffusion", "chromatic_aberration", "colour_quantisation",
                                                       "quantisation", "lens_blur"])
    parser.add_argument("--fit-kinds", nargs="+", help="kinds the transfer probe is fitted to (default: the "
                        "model's damage_kinds)")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--exclude", type=Path, help="a degradation check JSON whose photos are left out")
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--inner", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/feature-probe"))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, info = load_checkpoint_model(resolve_model(args.model), "cpu")
    config = TrainConfig.from_checkpoint(info)
    if not (args.fit_kinds or config.damage_kinds):
        raise SystemExit(f"{args.model} has no damage head ranked on damage kinds: name the kinds to fit with --fit-kinds")
    fit_kinds, probed = list(check_kinds(args.fit_kinds or config.damage_kinds)), list(check_kinds(args.kinds))
    if set(fit_kinds) & set(probed):
        raise SystemExit(f"{sorted(set(fit_kinds) & set(probed))} both fitted and read: a transfer probe reads kinds it "
                         "was not fitted to; leave them out of --kinds")
    grid, pre = config.eval_grid, model_preprocessing(model)
    excluded = set(json.loads(args.exclude.read_text())["photos"]) if args.exclude else set()
    records = [r for r in load_dataset("livec", args.data_root).records if r.path.name not in excluded]
    chosen = sorted(np.random.default_rng(args.seed).choice(len(records), size=min(args.photos, len(records)),
                                                            replace=False).tolist())
    kinds = fit_kinds + probed
    photos = [records[i] for i in chosen]
    key = cache_key(model, grid, [str(record.path.name) for record in photos])
    stacks = features(model, pre, grid, photos, kinds, args.cache / f"{key}.npz")

    def probe(fit_on: np.ndarray, read_on: list[np.ndarray]) -> dict:
        return cross_validated(fit_on, read_on, args.outer, args.inner, args.seed)

    per_step = {kind: [probe(step[:, None], [step])["ordered"][0] for step in steps(stacks[kind])] for kind in probed}
    fitted_steps = np.stack([step for kind in fit_kinds for step in steps(stacks[kind])], axis=1)
    read_on = [step for kind in probed for step in steps(stacks[kind])]
    transferred = probe(fitted_steps, read_on)
    shares = iter(transferred["ordered"])
    transfer = {kind: [next(shares) for _ in steps(stacks[kind])] for kind in probed}
    mirror = steps(stacks[MIRROR])[0]
    result = {"per_step": per_step, "transfer": transfer, "transfer_penalties": transferred["penalties"],
              "control_mirror": probe(mirror[:, None], [mirror])["ordered"][0]}
    atomic_write_json(args.output, {
        "command": "python scripts/feature_probe.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "fit_kinds": fit_kinds, "photos": len(chosen), "features": int(mirror.shape[-1]),
        **result, "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
