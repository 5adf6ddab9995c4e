"""The tiling settings (`mixmag tile --config`, the demo's `tiling:` section): what decides a tiling plan.

Apart from the tiling code so that the command line reads its defaults from here without loading slide readers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..geometry import LevelSpec

MAX_TILE_PX = 4096
MAX_CELL_PX = 1 << 16  # a cell's side at the finest level (tile_px x 2^(n_levels-1)); the paper's is 896
MAX_REGION = 64  # region and context sides, in cells
MAX_UM = 100_000.0  # 10 cm: any length in microns


class TissueParams(BaseModel):
    """Tissue segmentation settings; sizes in microns so they mean the same at any thumbnail mpp."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    thumbnail_mpp: float = Field(
        8.0, ge=0.1, le=1000, description="resolution of the thumbnail the mask is computed on"
    )
    min_saturation: int = Field(15, ge=0, le=255, description="floor on the Otsu saturation threshold")
    median_um: float = Field(56.0, ge=0, le=MAX_UM)
    closing_um: float = Field(64.0, ge=0, le=MAX_UM)
    min_component_mm2: float = Field(0.02, ge=0, le=10_000, description="tissue pieces smaller than this are dropped")
    max_hole_mm2: float = Field(0.02, ge=0, le=10_000, description="holes smaller than this are filled")
    model_threshold: float = Field(0.5, gt=0, lt=1, description="probability cut for a user tissue model")


class TilingParams(BaseModel):
    """Everything that decides a tiling plan. Defaults follow the paper: t = 3, l = 3 (5x/10x/20x), 45%."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_mpp: float = Field(2.0, gt=0, le=100, description="mpp of the coarsest level (5x = 2.0 um/px)")
    n_levels: int = Field(3, ge=1, le=8)
    tile_px: int = Field(224, ge=8, le=MAX_TILE_PX)
    region_size: int = Field(3, ge=1, le=MAX_REGION, description="t: region side in cells")
    region_stride: int | None = Field(
        None, ge=1, le=MAX_REGION, description="step between regions in cells; default t (no overlap)"
    )
    context_size: int | None = Field(
        None, ge=1, le=MAX_REGION, description="c: also accept c x c context windows (CMEM)"
    )
    tissue_threshold: float = Field(0.45, ge=0, le=1)
    mpp_tolerance: float = Field(
        0.05, ge=0, lt=0.5, description="a level within this relative margin counts as fine enough"
    )
    resample_tolerance: float = Field(
        0.0,
        ge=0,
        le=0.05,
        description="a level this close to the target mpp (relative) is read as it is, not resampled; its real mpp "
        "is recorded (0: always resample to the exact mpp)",
    )
    allow_upsample: bool = False
    tissue: TissueParams = TissueParams()

    @model_validator(mode="after")
    def _context_holds_region(self) -> TilingParams:
        if self.context_size is not None and self.context_size < self.region_size:
            raise ValueError(f"context_size ({self.context_size}) must be >= region_size ({self.region_size})")
        if self.tile_px * 2 ** (self.n_levels - 1) > MAX_CELL_PX:
            raise ValueError(
                f"tile_px {self.tile_px} at {self.n_levels} levels makes {self.tile_px * 2 ** (self.n_levels - 1)} px "
                f"cells at the finest level (at most {MAX_CELL_PX}); lower tile_px or n_levels"
            )
        return self

    @property
    def levels(self) -> LevelSpec:
        return LevelSpec(self.base_mpp, self.n_levels, self.tile_px)

    @property
    def read_options(self) -> dict:
        """The keyword arguments every pixel read of this plan takes (`mixmag.slides.reader:plan_read`)."""
        return dict(
            tolerance=self.mpp_tolerance, allow_upsample=self.allow_upsample, keep_within=self.resample_tolerance
        )

    def recorded(self) -> dict:
        """The settings as plans and stores record them; a setting left at a default that older files lack is left
        out, so their records stay equal to today's."""
        return self.model_dump(exclude={"resample_tolerance"} if self.resample_tolerance == 0 else None)

    @property
    def stride(self) -> int:
        return self.region_stride or self.region_size
