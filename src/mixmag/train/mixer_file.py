"""A pretrained region mixer on disk: mixer.safetensors (the mixer's weights) and mixer.json
(its architecture, the pretraining config, and how the stores it learned from were made).

The stores' provenance travels with the mixer because a mixer only understands the embedding space it
was pretrained in: applied to another encoder's (or other weights') embeddings of the same width it
would run without error and produce noise.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, MixmagError
from ..fileio import atomic_path, file_sha256, make_folder, write_json_atomic
from ..models.mixer import MixerConfig, RegionMixer
from ..runs import MIXER_META, MIXER_WEIGHTS, MixerMeta, read_mixer_meta
from ..store import EmbeddingSpace
from ..weights_io import WeightsFileError, load_safetensors


def export_mixer(
    out: Path, mixer: torch.nn.Module, mixer_cfg: MixerConfig, pretraining: dict, stores: EmbeddingSpace | dict
) -> Path:
    """Write the mixer (safetensors, atomically) and its mixer.json; `stores` is their shared settings (or space)."""
    from safetensors.torch import save_file

    path = out / MIXER_WEIGHTS
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in mixer.state_dict().items()}, str(tmp))
    meta = {
        "mixer": asdict(mixer_cfg),
        "pretraining": pretraining,
        "stores": EmbeddingSpace.of(stores).space.model_dump(),
        "mixmag_version": __version__,
    }
    write_json_atomic(out / MIXER_META, meta, indent=1)
    return path


RANDOM_INIT_STREAM = 0x52414E44  # "RAND": the random mixers' own seed stream


def random_init_seed(seed: int) -> int:
    """The torch seed a random mixer of `seed` is drawn with. Pretraining draws its mixer's initial weights right
    after `torch.manual_seed(pretraining seed)`, so a random mixer drawn after `torch.manual_seed(seed)` was, at the
    same seed, MEM's own starting point, not an independent draw; this stream never gives a small seed's draw."""
    return int(np.random.SeedSequence([seed, RANDOM_INIT_STREAM]).generate_state(1, np.uint64)[0] % 2**63)


def random_mixer(cfg: MixerConfig, seed: int) -> RegionMixer:
    """A mixer of this architecture with fresh weights from `seed`'s random-init stream; the caller's random state
    is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_init_seed(seed))
        return RegionMixer(cfg)


def export_random_twin(like: Path, out: Path, seed: int = 0) -> Path:
    """`like`'s architecture with fresh (seeded) weights, saved like a pretrained mixer with like's stores
    provenance: a frozen Random baseline that differs from the pretrained mixer in initialisation only."""
    meta = _read_meta(Path(like).with_name(MIXER_META), f"give the {MIXER_WEIGHTS} that `mixmag pretrain` wrote")
    cfg = MixerConfig(**meta.mixer)
    mixer = random_mixer(cfg, seed)  # the same fresh weights every time, never like's initial ones
    make_folder(out)
    pretraining = {
        "init": "random",
        "seed": seed,
        "stream": "random_init_seed",
        "preset": meta.preset,
        "like": str(like),
    }
    return export_mixer(out, mixer, cfg, pretraining, meta.space)


def pretrained_mixer_set(mixer: Path, methods: list[str], folder: Path) -> dict[str, str]:
    """The grid's pretrained mixers: the MEM one, and for 'Random-...' methods its random twin saved in `folder`,
    drawn with the MEM run's pretraining seed (in the random-init stream): each pretraining run, a fresh twin."""
    mixers = {"MEM": str(mixer)}
    if any(m.startswith("Random-") for m in methods):
        meta = _read_meta(Path(mixer).with_name(MIXER_META), f"give the {MIXER_WEIGHTS} that `mixmag pretrain` wrote")
        seed = (meta.pretraining or {}).get("seed", 0)
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63 else 0
        mixers["Random"] = str(export_random_twin(mixer, folder, seed=seed))
    return mixers


def load_mixer(weights: str | Path, stores: EmbeddingSpace | dict | None = None) -> tuple[RegionMixer, str]:
    """The mixer (strictly loaded, eval mode) and a digest of its weights. With `stores` (the settings
    of the stores it is about to read), refuses stores made unlike its pretraining stores."""
    weights = Path(weights)
    meta_path = weights.with_name(MIXER_META)
    if not weights.is_file() or not meta_path.is_file():
        raise ConfigError(
            f"{weights}: pretrained mixer not found (needs {MIXER_WEIGHTS} and {MIXER_META} from `mixmag pretrain`)"
        )
    fix = f"give the {MIXER_WEIGHTS} (with its {MIXER_META}) that `mixmag pretrain` wrote"
    meta = _read_meta(meta_path, fix)
    if stores is not None:
        check_stores_fit_mixer(weights, meta.space, EmbeddingSpace.of(stores))
    mixer = RegionMixer(MixerConfig(**meta.mixer))
    try:
        mixer.load_state_dict(load_safetensors(weights, fix=fix), strict=True)
    except RuntimeError as exc:
        raise WeightsFileError(
            f"{weights}: its tensors do not fit the architecture in {MIXER_META} "
            f"({str(exc).splitlines()[0][:200]}); {fix}"
        ) from None
    return mixer.eval(), weights_digest(weights)


ARCHITECTURE_PER_STORE = ("in_dim", "t", "n_levels")  # set by the stores a mixer reads, not part of its architecture


def mixer_architecture(weights: str | Path) -> tuple[str, dict]:
    """(preset name it was pretrained with, its architecture less the store-given fields) from mixer.json, so
    that a random baseline can be built as the same network with fresh weights."""
    meta_path = Path(weights).with_name(MIXER_META)
    try:
        meta = read_mixer_meta(meta_path)
        arch = {k: v for k, v in meta.mixer.items() if k not in ARCHITECTURE_PER_STORE}
        MixerConfig(**arch)  # checks the names and values
    except (OSError, ValueError, KeyError, TypeError, MixmagError) as exc:
        raise ConfigError(
            f"{meta_path}: cannot read the pretrained mixer's architecture ({exc}); "
            "point at a mixer.safetensors written by `mixmag pretrain`"
        ) from exc
    return meta.preset, arch


def _read_meta(path: Path, fix: str) -> MixerMeta:
    """mixer.json: the architecture must name exactly MixerConfig's fields."""
    try:
        meta = read_mixer_meta(path)
        MixerConfig(**meta.mixer)
    except (ValueError, TypeError, UnicodeDecodeError, MixmagError) as exc:
        raise WeightsFileError(
            f"{path}: not a mixer description ({type(exc).__name__}: {str(exc)[:200]}); {fix}"
        ) from None
    return meta


def weights_digest(weights: str | Path) -> str:
    """Names a mixer's weights by content: a retrained mixer at the same path is another mixer.
    Hashed once per file version (a paper-size mixer is about 1 GB)."""
    stat = os.stat(weights)
    return _digest(str(Path(weights).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path, "mixer weights")[:16]


def check_stores_fit_mixer(weights: Path, pretrained_on: EmbeddingSpace, stores: EmbeddingSpace) -> None:
    """Mixers from before provenance was recorded (no "stores" in mixer.json) are not checked."""
    different = pretrained_on.differences(stores)
    if different:
        detail = "; ".join(
            f"{k}: mixer {getattr(pretrained_on, k)!r} vs stores {getattr(stores, k)!r}" for k in different
        )
        raise ConfigError(
            f"{weights}: pretrained on stores made differently from these ({detail}); a mixer only reads "
            "the embeddings it was pretrained on: pretrain on these stores, or embed them like its own"
        )
