"""Errors that name the input at fault and say how to fix it."""

from __future__ import annotations

from pathlib import Path


class MixmagError(Exception):
    """Base class of every error mixmag raises on purpose (bad input, bad config)."""


class MixmagWarning(UserWarning):
    """Base class of mixmag's warnings: input that works but may not be what the user meant."""


class SlideError(MixmagError):
    """A problem with one slide: carries the slide path and a suggested fix."""

    def __init__(self, slide: str | Path, problem: str, fix: str = "") -> None:
        self.slide = str(slide)
        self.problem = problem
        self.fix = fix
        message = f"{self.slide}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


class SlideNotFoundError(SlideError):
    pass


class SlideUnreadableError(SlideError):
    pass


class MppError(SlideError):
    """Missing or implausible microns per pixel."""


class ResolutionError(SlideError):
    """A magnification the slide cannot provide without upsampling."""


class ConfigError(MixmagError):
    """A config file or a --set override that does not fit its schema."""


class OptionError(MixmagError):
    """A command-line option (or the matching API argument) with a value mixmag does not know."""


class CohortError(MixmagError):
    pass


class RunError(MixmagError):
    """A run folder (pretraining or training), or what a run reads (a pretrained mixer, precomputed mixer outputs),
    is missing, unfinished or unreadable."""


class TrainingDivergedError(RunError, FloatingPointError):
    """A loss that became NaN or infinite: the learning rate (or the precision) does not suit the data."""


class RunMismatchError(RunError):
    """A run and its inputs do not fit: stores made differently, other encoder weights, a newer run format."""


class StageError(MixmagError):
    """A stage that had to stop because some of its inputs failed (each failure is named)."""


class PlanError(MixmagError, ValueError):
    """A tiling plan (plan.json) that is missing or cannot be read."""


class TissueModelError(MixmagError, ValueError):
    """A tissue model file that is missing, of an unknown format, or cannot be loaded."""
