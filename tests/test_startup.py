"""What a `mixmag tile` process imports (issue 29 §2): tiling an SVS needs neither torch nor the optional readers'
libraries (pydicom for DICOM, slideio; s3fs and wsidicom for slides by URL), so every tiling process starts in a
fraction of the time and memory. zarr is still imported, by TiffSlide itself."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from typer.testing import CliRunner
from mixmag.cli import app
result = CliRunner().invoke(app, ["tile", sys.argv[1], "--out", sys.argv[2], "--region-size", "1"])
print(json.dumps({"code": result.exit_code, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def test_tiling_an_svs_imports_neither_torch_nor_the_optional_readers(real_svs, tmp_path):
    command = [sys.executable, "-c", PROBE, str(real_svs), str(tmp_path / "tiles")]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0
    assert "tiffslide" in seen["modules"]  # the probe did tile with the fast reader
    assert not {"torch", "pydicom", "slideio", "timm", "sklearn"} & set(seen["modules"])
    # nor the remote backends' (issue 28): object storage clients and DICOMweb are imported for a URL only
    assert not {"s3fs", "botocore", "aiobotocore", "wsidicom", "dicomweb_client", "moto", "gcsfs", "adlfs"} & set(
        seen["modules"]
    )
