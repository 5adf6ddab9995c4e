"""Per-slide state records of a stage's output folder, and the one summary of that folder (`mixmag status`).

Each worker writes, atomically, `<out>/.mixmag/<stage>/<slide>.state.json` when it finishes a slide: done (with the
outcome: made, or already current) or failed (with the reason), how long it took, and which worker it was. Each
worker also adds the slides of its cohort to `cohort.json` there, so the summary can tell the slides nobody has
started (pending) from those nobody was asked to do. The summary joins these with the live claims
(`mixmag.claims`): done, failed (with reasons), claimed (by whom, since when), pending.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .claims import DEFAULT_TIMEOUT, WORK_FOLDER, ClaimInfo, list_claims, stage_folder
from .errors import MixmagError
from .fileio import DamagedFileError, KiB, own_folder_exists, read_bytes_limited, write_json_atomic
from .ids import check_id, is_safe_id

STATE_SUFFIX = ".state.json"
RECORD_LIMIT = 64 * KiB  # a record is one line; its reason is cut at 4,000 characters
COHORT_FILE = "cohort.json"
STAGES = ("tile", "embed")

State = Literal["done", "failed"]


class StateRecord(BaseModel):
    """What one worker says about one slide it finished."""

    model_config = ConfigDict(extra="ignore")
    slide: str
    stage: str
    state: State
    outcome: str = ""  # the stage's word: tiled / embedded / skipped (already current) / failed
    reason: str | None = None
    seconds: float = 0.0
    finished: float = 0.0  # seconds since the epoch
    host: str = ""
    pid: int = 0
    worker: str = ""  # "shard 1/4, rank 0/2"


def state_path(out_dir: str | Path, stage: str, slide_id: str) -> Path:
    """The record's name (the id checked; not resolved: records are read without following links and replaced by
    rename, so a link there is never written through)."""
    return stage_folder(out_dir, stage) / f"{check_id(slide_id)}{STATE_SUFFIX}"


def write_state(
    out_dir: str | Path,
    stage: str,
    slide_id: str,
    state: State,
    *,
    outcome: str = "",
    reason: str | None = None,
    seconds: float = 0.0,
    worker: str = "",
    only_new: bool = False,
) -> bool:
    """Record a finished slide; False when the record could not be written (a full disk): the slide then shows as
    pending, and a rerun does it again, which is safe. `only_new` keeps a record that already says the same state
    (a rerun that finds the output current does not rewrite a million records)."""
    path = state_path(out_dir, stage, slide_id)
    if only_new:
        try:
            if read_state(path).state == state:
                return True
        except MixmagError:
            pass  # none yet, or damaged: written below
    record = StateRecord(
        slide=slide_id,
        stage=stage,
        state=state,
        outcome=outcome,
        reason=None if reason is None else reason[:4000],
        seconds=round(float(seconds), 3),
        finished=time.time(),
        host=socket.gethostname()[:200],
        pid=os.getpid(),
        worker=worker,
    )
    try:
        write_json_atomic(path, record.model_dump(), indent=None)
    except (OSError, MixmagError):
        return False
    return True


def read_state(path: Path) -> StateRecord:
    """One record; a link, a FIFO, a large or damaged file is `DamagedFileError` naming the file."""
    try:
        data = read_bytes_limited(path, RECORD_LIMIT, what="state record", follow=False)
        return StateRecord.model_validate(json.loads(data.decode("utf-8")))
    except (ValueError, ValidationError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path}: the state record is damaged ({_first_line(exc)}); delete it") from None
    except (OSError, MixmagError) as exc:
        raise DamagedFileError(f"{path}: {exc}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def add_to_cohort(out_dir: str | Path, stage: str, slide_ids: list[str]) -> None:
    """Add slides to the stage's cohort list (the union of what every worker was given). Workers of one cohort
    write the same list, so two writing at once lose nothing; a list that cannot be written is skipped."""
    path = stage_folder(out_dir, stage) / COHORT_FILE
    known = set(read_cohort(path))
    wanted = known | set(slide_ids)
    if wanted == known:
        return
    try:
        write_json_atomic(path, {"slides": sorted(wanted)}, indent=None)
    except (OSError, MixmagError):
        pass


def read_cohort(path: Path) -> list[str]:
    try:
        data = json.loads(read_bytes_limited(path, "table", what="cohort list", follow=False))
    except FileNotFoundError:
        return []
    except (ValueError, OSError, MixmagError):
        return []  # damaged: the summary then knows only the slides with records or claims
    slides = data.get("slides") if isinstance(data, dict) else None
    return [s for s in slides if is_safe_id(s)] if isinstance(slides, list) else []


@dataclass
class StageStatus:
    """Where a stage's slides stand in one output folder."""

    stage: str
    done: dict[str, StateRecord] = field(default_factory=dict)
    failed: dict[str, StateRecord] = field(default_factory=dict)
    claimed: dict[str, ClaimInfo] = field(default_factory=dict)
    stale: dict[str, ClaimInfo] = field(default_factory=dict)  # a dead worker's claims: the next run takes them over
    pending: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # slide -> why its record or claim cannot be read

    def counts(self) -> dict[str, int]:
        return {
            "slides": len(self.done) + len(self.failed) + len(self.pending) + len(self.claimed) + len(self.stale),
            "done": len(self.done),
            "failed": len(self.failed),
            "claimed": len(self.claimed),
            "stale claims": len(self.stale),
            "pending": len(self.pending),
        }

    def as_json(self) -> dict:
        return {
            "stage": self.stage,
            "counts": self.counts(),
            "done": {s: r.model_dump() for s, r in sorted(self.done.items())},
            "failed": {s: r.model_dump() for s, r in sorted(self.failed.items())},
            "claimed": {s: _claim_json(c) for s, c in sorted(self.claimed.items())},
            "stale_claims": {s: _claim_json(c) for s, c in sorted(self.stale.items())},
            "pending": sorted(self.pending),
            "unreadable": dict(sorted(self.unreadable.items())),
        }


def _claim_json(info: ClaimInfo) -> dict:
    holder = info.holder.model_dump() if info.holder else None
    return {"holder": holder, "heartbeat": info.heartbeat, "age_s": round(info.age, 1), "stale": info.stale}


def stage_status(out_dir: str | Path, stage: str, *, timeout: float = DEFAULT_TIMEOUT) -> StageStatus:
    """The summary of one stage in `out_dir` (read only, apart from a probe of the file system's clock)."""
    folder = stage_folder(out_dir, stage, create=False)
    status = StageStatus(stage)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(STATE_SUFFIX) or entry.name.startswith("."):
            continue
        slide_id = entry.name[: -len(STATE_SUFFIX)]
        try:
            record = read_state(Path(entry.path))
        except MixmagError as exc:
            status.unreadable[slide_id] = str(exc)
            continue
        (status.done if record.state == "done" else status.failed)[slide_id] = record
    for claim in list_claims(folder, timeout=timeout):
        if isinstance(claim, tuple):
            status.unreadable[claim[0]] = claim[1]
            continue
        status.done.pop(claim.slide_id, None)  # being redone (--force) or retried after a failure
        status.failed.pop(claim.slide_id, None)
        (status.stale if claim.stale else status.claimed)[claim.slide_id] = claim
    seen = set(status.done) | set(status.failed) | set(status.claimed) | set(status.stale)
    status.pending = sorted(set(read_cohort(folder / COHORT_FILE)) - seen)
    return status


def folder_status(out_dir: str | Path, *, timeout: float = DEFAULT_TIMEOUT) -> list[StageStatus]:
    """Every stage that has worked in `out_dir` (tile, embed), in pipeline order."""
    base = Path(out_dir) / WORK_FOLDER
    if not _work_folder(base):
        return []
    return [stage_status(out_dir, s, timeout=timeout) for s in STAGES if _work_folder(base / s)]


def _work_folder(path: Path) -> bool:
    """True for one of mixmag's work folders, False when there is none; a FIFO, file or link there is said by name
    (it is never followed, and 'no state records' would hide it)."""
    return own_folder_exists(path, "mixmag's work folder", "move it away and run the stage again")
