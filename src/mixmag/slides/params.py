"""The tiling settings (`mixmag tile --config`, the demo's `tiling:` section): what decides a tiling plan.

Apart from the tiling code so that the command line reads its defaults from here without loading slide readers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..geometry import LevelSpec


class TissueParams(BaseModel):
    """Tissue segmentation settings; sizes in microns so they mean the same at any thumbnail mpp."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thumbnail_mpp: float = Field(8.0, gt=0, description="resolution of the thumbnail the mask is computed on")
    min_saturation: int = Field(15, ge=0, le=255, description="floor on the Otsu saturation threshold")
    median_um: float = Field(56.0, ge=0)
    closing_um: float = Field(64.0, ge=0)
    min_component_mm2: float = Field(0.02, ge=0, description="tissue pieces smaller than this are dropped")
    max_hole_mm2: float = Field(0.02, ge=0, description="holes smaller than this are filled")
    model_threshold: float = Field(0.5, gt=0, lt=1, description="probability cut for a user tissue model")


class TilingParams(BaseModel):
    """Everything that decides a tiling plan. Defaults follow the paper: t = 3, l = 3 (5x/10x/20x), 45%."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_mpp: float = Field(2.0, gt=0, description="mpp of the coarsest level (5x = 2.0 um/px)")
    n_levels: int = Field(3, ge=1, le=8)
    tile_px: int = Field(224, ge=8)
    region_size: int = Field(3, ge=1, description="t: region side in cells")
    region_stride: int | None = Field(None, ge=1, description="step between regions in cells; default t (no overlap)")
    context_size: int | None = Field(None, ge=1, description="c: also accept c x c context windows (CMEM)")
    tissue_threshold: float = Field(0.45, ge=0, le=1)
    mpp_tolerance: float = Field(
        0.05, ge=0, lt=0.5, description="a level within this relative margin counts as fine enough"
    )
    allow_upsample: bool = False
    tissue: TissueParams = TissueParams()

    @model_validator(mode="after")
    def _context_holds_region(self) -> TilingParams:
        if self.context_size is not None and self.context_size < self.region_size:
            raise ValueError(f"context_size ({self.context_size}) must be >= region_size ({self.region_size})")
        return self

    @property
    def levels(self) -> LevelSpec:
        return LevelSpec(self.base_mpp, self.n_levels, self.tile_px)

    @property
    def stride(self) -> int:
        return self.region_stride or self.region_size
