"""`mixmag encode`: run the pretrained region mixer (not the tile encoder, which `mixmag embed` ran) over every
store's regions once, writing the contextualized (patch) and compressed (cls) region embeddings per slide for
slide-level models. The command keeps its name for compatibility; "encode" here is the mixer step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.bags import region_bag
from ..data.encoded import encoded_is_current, write_encoded
from ..errors import MixmagError
from ..fileio import file_sha256, make_folder
from ..interop import mixer_tokens
from ..interop.mixer_tokens import DEFAULT_NAME, MixerOutputs
from ..interop.plans import plan_for_store
from ..models.mixer import RegionMixer
from ..runs import MIXER_WEIGHTS
from ..store import PipelineSettings, StoreError, read_header, read_store, shared_settings
from ..train.mixer_file import load_mixer


@torch.no_grad()
def encode_stores(
    stores: list[Path],
    weights: Path,
    out_dir: Path,
    *,
    batch: int = 64,
    device: torch.device | None = None,
    on_slide: Callable[[str, str], None] | None = None,
    settings: PipelineSettings | None = None,
    on_failed: Callable[[Path, MixmagError | OSError], None] | None = None,
) -> list[Path]:
    """`settings`: the stores' shared settings when known (from the catalog), else read from every header.
    `on_failed`: told of each store the mixer cannot run over (damaged, no regions, another dimension), and the batch
    goes on, as `mixmag embed` does for a slide; without it the first such store stops the batch."""
    device = device or torch.device("cpu")
    if settings is None and on_failed is not None:  # a header that does not read is that slide's failure
        stores, unreadable = _readable(stores)
        for path, exc in unreadable.items():
            on_failed(path, exc)
    mixer, digest = load_mixer(weights, settings or (shared_settings(stores) if stores else None))
    mixer.to(device)
    make_folder(out_dir)
    written: list[Path] = []
    for store in stores:
        try:
            outcome = _encode_one(mixer, digest, store, out_dir / store.name, weights, device, batch)
        except (MixmagError, OSError) as exc:
            if on_failed is None:
                raise
            on_failed(store, exc)
            continue
        written.append(out_dir / store.name)
        if on_slide:
            on_slide(store.stem, outcome)
    return written


def _encode_one(
    mixer: RegionMixer, digest: str, store: Path, target: Path, weights: Path, device: torch.device, batch: int
) -> str:
    """One store's encoded file, unless the current one is already there: "encoded" or "skipped"."""
    if encoded_is_current(target, store, digest):
        return "skipped"
    patches, cls = run_mixer(mixer, store, device, batch)
    write_encoded(
        target, patches.astype(np.float16), cls.astype(np.float16), store=store, weights=weights, mixer_digest=digest
    )
    return "encoded"


@torch.no_grad()
def run_mixer(mixer: RegionMixer, store: Path, device: torch.device, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The mixer over a store's accepted regions, in the store's window order: contextualized tokens (R, s, D) and
    compressed embeddings (R, D'), float32."""
    regions = torch.from_numpy(region_bag(store).astype(np.float32))
    if regions.shape[-1] != mixer.config.in_dim:
        raise StoreError(f"{store}: {regions.shape[-1]}-d embeddings, the mixer takes {mixer.config.in_dim}-d")
    patches, cls = [], []
    for start in range(0, len(regions), batch):
        contextual, compressed = mixer(regions[start : start + batch].to(device))
        patches.append(contextual.float().cpu().numpy())
        cls.append(compressed.float().cpu().numpy())
    return np.concatenate(patches), np.concatenate(cls)


def mixer_weights_path(mixer: Path) -> Path:
    """mixer.safetensors itself, or the one in a pretraining run folder."""
    mixer = Path(mixer)
    return mixer / MIXER_WEIGHTS if mixer.is_dir() else mixer


def export_mixer_tokens(
    stores: list[Path],
    mixer: Path,
    out: Path,
    *,
    format: str = "trident",
    plans: Path | None = None,
    name: str = DEFAULT_NAME,
    device: torch.device | None = None,
    batch: int = 64,
) -> Iterator[tuple[Path, list[Path] | MixmagError]]:
    """The mixer's contextualized tokens (every level) and region CLS of every store, as TRIDENT or CLAM feature files
    (`mixmag.interop.mixer_tokens`); yields (store, files written) or (store, the error that stopped that slide)."""
    weights = mixer_weights_path(mixer)
    device = device or torch.device("cpu")
    readable, unreadable = _readable(stores)
    model, digest = load_mixer(weights, shared_settings(readable) if readable else None)
    model.to(device)
    for path in stores:
        if path in unreadable:
            yield path, unreadable[path]
            continue
        try:
            store = read_store(path)
            plan = plan_for_store(store, plans) if format == "trident" else None
            tokens, cls = run_mixer(model, path, device, batch)
            outputs = MixerOutputs(
                tokens,
                cls,
                store.windows["regions"],
                int(store.header.region_size or 0),
                digest,
                str(weights.resolve()),
                file_sha256(path, "store"),
            )
            if format == "trident":
                yield path, mixer_tokens.export_trident(store, plan, outputs, out, name)
            else:
                yield path, mixer_tokens.export_clam(store, outputs, out)
        except MixmagError as exc:
            yield path, exc


def _readable(stores: list[Path]) -> tuple[list[Path], dict[Path, MixmagError]]:
    """The stores whose header reads, and why each other one does not: one damaged, missing or FIFO store is that
    slide's failure, never the batch's (the mixer is checked against the readable ones' shared settings)."""
    unreadable: dict[Path, MixmagError] = {}
    for path in stores:
        try:
            read_header(path)
        except MixmagError as exc:
            unreadable[path] = exc
    return [p for p in stores if p not in unreadable], unreadable
