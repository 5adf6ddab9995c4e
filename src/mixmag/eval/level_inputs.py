"""A trained slide model and one slide's store as a `LevelInput`: the embeddings the model reads, the
magnification of each, and a forward function over batches of them (for `eval.attribution`).

Models on precomputed mixer outputs (bags patch / cls) are run from the store's regions through the
mixer that made those outputs, so every measure acts on the same thing: the store's embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.bags import TILE_MODES, region_bag
from ..data.cohort import load_cohort
from ..errors import MixmagError
from ..ids import check_id
from ..runs import RunConfigRecord, TrainRun
from ..store import StoreIndex, read_index
from ..train.classifier import SlideClassifier
from .attribution import LevelImportance, LevelInput, cohort_reference, level_importance
from .explain import region_layout, tile_layout


def slide_input(
    classifier: SlideClassifier, slide: str, store_path: Path, store: StoreIndex | None = None
) -> LevelInput:
    """The LevelInput of one slide for a trained model (`SlideClassifier.load`, or a Trainer's `classifier`); `store`:
    the store's index where the caller has read it already (`explain_slide`'s)."""
    kind, model = classifier.bag_kind, classifier.model.eval()
    store = read_index(store_path) if store is None else store
    names = list(store.level_names)
    if kind in TILE_MODES:
        x = classifier.bags(slide).float()
        level = torch.from_numpy(tile_layout(store, kind).level)

        def forward(xb, keep):
            return model(xb, torch.ones(xb.shape[:2], dtype=torch.bool) if keep is None else keep)

        return LevelInput(x, level, names, forward, removable=True, attention_level=level)
    if kind == "regions":
        x = classifier.bags(slide).float()
        level = torch.from_numpy(region_layout(store, classifier.region_level).level).reshape(x.shape[:2])
        patch = model.output == "patch"

        def forward(xb, keep):
            return model(xb, torch.ones(xb.shape[:2], dtype=torch.bool))

        return LevelInput(x, level, names, forward, attention_level=level.reshape(-1) if patch else None)
    # patch / cls: precomputed outputs of a frozen mixer; run that mixer on the store's regions
    mixer = classifier.encoded_mixer_model()
    x = torch.from_numpy(region_bag(store_path).astype(np.float32))
    level = torch.from_numpy(region_layout(store).level).reshape(x.shape[:2])

    def run_mixer(xb, keep):
        b, r, s, d = xb.shape
        contextual, compressed = mixer(xb.reshape(b * r, s, d))
        feats = compressed.reshape(b, r, -1) if kind == "cls" else contextual.reshape(b, r * s, -1)
        return model(feats, torch.ones(feats.shape[:2], dtype=torch.bool))

    return LevelInput(x, level, names, run_mixer, attention_level=level.reshape(-1) if kind == "patch" else None)


def reads_one_level(bags: str, region_level: str | None) -> bool:
    """A model that sees one magnification only has nothing to attribute between magnifications."""
    return bags in ("5x", "10x", "20x") or (bags == "regions" and region_level is not None)


def training_slides(config: RunConfigRecord, limit: int = 32) -> tuple[dict[str, Path], list[str]]:
    """(stores by slide, up to `limit` training slides) of a run's cohort; nothing when it cannot be read."""
    try:
        cohort = load_cohort(config.cohort, config.stores, task=config.task)  # the task's columns, not a binary label
    except (MixmagError, OSError):
        return {}, []
    return dict(cohort.stores), [sp.slides[0] for sp in cohort.split("train")][:limit]


def occlusion_reference(classifier: SlideClassifier, train: dict[str, Path]) -> tuple[torch.Tensor | None, str]:
    """What 'mean-replaced' puts in: each level's mean embedding over training slides (the classifier must read
    their stores), or each slide's own mean when there are none; and the sentence that says which."""
    if train:
        reference = cohort_reference([slide_input(classifier, s, p) for s, p in train.items()])
        return reference, f"reference: each magnification's mean embedding over {len(train)} training slides"
    return None, "reference: each slide's own mean embedding per magnification (the training cohort could not be read)"


def run_level_importance(
    run: Path, test_slides: list[str], *, max_slides: int = 24, max_reference: int = 32, steps: int = 24
) -> tuple[list[LevelImportance], str]:
    """Every measure on up to `max_slides` of `test_slides` of a finished run (`mixmag train` folder), with
    the reference embeddings (what 'mean-replaced' puts in) averaged over up to `max_reference` training
    slides of its cohort. Returns the importances and a sentence saying which reference was used."""
    chosen = test_slides[:max_slides]
    classifier, used, reference, note = prepared_run(run, chosen, max_reference)
    return [
        level_importance(s, slide_input(classifier, s, used[s]), reference=reference, steps=steps) for s in chosen
    ], note


def prepared_run(
    run: Path, chosen: list[str], max_reference: int = 32
) -> tuple[SlideClassifier, dict[str, Path], torch.Tensor | None, str]:
    """A finished run's model reading the stores of the `chosen` test slides (checked; `slide_input` makes their
    inputs), those stores, and the occlusion reference over up to `max_reference` training slides with its sentence."""
    classifier = SlideClassifier.load(run)
    config = TrainRun(run).read_config_record()
    stores_dir = config.stores_folder
    stores, train = training_slides(config, max_reference)
    for slide in chosen + train:
        stores.setdefault(slide, stores_dir / f"{check_id(slide, where=f'{run} predictions')}.h5")
    used = {s: stores[s] for s in chosen + train}
    classifier.check_stores(used)
    if not classifier.reads_encoded:
        classifier.use_stores(used)
    reference, note = occlusion_reference(classifier, {s: used[s] for s in train})
    return classifier, used, reference, note
