"""mixmag: mixed-magnification region embeddings and slide-level models for computational pathology.

`import mixmag` is the front door for Python and notebooks: `mixmag.tile`, `embed`, `pretrain`, `train`, `evaluate`,
`predict`, `report`, `export`, their config models and `SlideClassifier` (`mixmag.api`). They are loaded on first
use, so a process that only tiles never imports torch; this is the one place mixmag defers an import of its own (the
top of the package, not a cycle dodged). `train` and `report` are also sub-packages: the front door's names are
properties of the package, so `mixmag.train(...)` is the stage whichever of them was imported first, while
`mixmag.train.finetune`, `import mixmag.train.pretrain as engine` and `from mixmag.train.finetune import ...` reach
the sub-package as always.
"""

import sys
import types
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mixmag")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_FRONT_DOOR = (
    "PretrainConfig",
    "SlideClassifier",
    "TilingParams",
    "TissueParams",
    "TrainConfig",
    "embed",
    "evaluate",
    "export",
    "predict",
    "pretrain",
    "report",
    "tile",
    "train",
)
__all__ = ["__version__", *_FRONT_DOOR]


class _StageAndPackage:
    """`mixmag.train` / `mixmag.report`: called, the stage; otherwise the sub-package of the same name, so that
    `import mixmag.train.pretrain as engine` and `mixmag.report.html` keep working."""

    def __init__(self, stage, package: str) -> None:
        self._stage, self._package = stage, package
        self.__doc__ = stage.__doc__

    def __call__(self, *args, **kwargs):
        return self._stage(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(import_module(self._package), name)

    def __repr__(self) -> str:
        return f"<mixmag stage {self._stage.__name__} (and package {self._package})>"


def _door(name: str) -> property:
    def get(module: types.ModuleType):
        stage = getattr(import_module("mixmag.api"), name)
        return _StageAndPackage(stage, f"mixmag.{name}") if name in ("train", "report") else stage

    def bind(module: types.ModuleType, value: object) -> None:  # the import system binding a sub-package
        module.__dict__[name] = value

    return property(get, bind)


class _Package(types.ModuleType):
    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


for _name in _FRONT_DOOR:
    setattr(_Package, _name, _door(_name))
sys.modules[__name__].__class__ = _Package
