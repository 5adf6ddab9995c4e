"""The names mixmag's first presets had, before presets took TRIDENT's names: stores, mixers and runs made then
record the old name, and read it as the new one (no torch here: the store reads it with every header)."""

from __future__ import annotations

RENAMED = {
    "uni": "uni_v1",
    "uni2-h": "uni_v2",
    "h-optimus-0": "hoptimus0",
    "h-optimus-1": "hoptimus1",
    "prov-gigapath": "gigapath",
    "phikon-v2": "phikon_v2",
}


def current_name(name: str | None) -> str | None:
    """The preset's name today for a name recorded by any mixmag version."""
    return RENAMED.get(name, name) if isinstance(name, str) else name
