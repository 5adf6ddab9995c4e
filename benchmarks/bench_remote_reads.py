"""The tile stage of the test slide read locally, from S3 and from DICOMweb (issue 28): CPU seconds of this process and
wall seconds, rounds alternated (local S3 local S3 ..., then the DICOM pair), each run a fresh `tile_slides --force`.

The servers run in their own processes on 127.0.0.1 (moto's S3 server, Orthanc with its DICOMweb plugin), so the CPU
seconds are the client's own: request handling, range reads and decoding. Wall seconds include the servers' answer
time over the loopback (no network latency): a real bucket or PACS adds its round trips. Needs the dev extra
(moto[server], s3fs, wsidicomizer) and Debian's orthanc + orthanc-dicomweb for the DICOMweb pair.

python benchmarks/bench_remote_reads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's server starters (tests/remote_servers.py)

from remote_servers import S3_ENV, environment, orthanc_server, s3_server_process, upload_dicom  # noqa: E402

from mixmag.slides.params import TilingParams  # noqa: E402
from mixmag.slides.pyramids import read_pyramid  # noqa: E402
from mixmag.slides.sources import sources_from_paths  # noqa: E402
from mixmag.stages.tile import tile_slides  # noqa: E402
from mixmag.synth.slide_formats import write_dicom  # noqa: E402

SVS = ROOT / "tests" / "data" / "CMU-1-Small-Region.svs"


Times = dict[str, list[tuple[float, float, float, float]]]


def run(target: str | Path, out: Path) -> tuple[float, float, float, float]:
    """(CPU s, wall s) of tiling one slide (a thumbnail read), then of reading every planned cell's tiles at every
    level (what `mixmag embed`'s workers read, without the encoder)."""
    params = TilingParams(region_size=1)
    cpu, wall = time.process_time(), time.perf_counter()
    (result,) = tile_slides(sources_from_paths([target]), out, params, force=True)
    tile_cpu, tile_wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.outcome == "tiled", result.error
    plan = result.plan
    cpu, wall = time.process_time(), time.perf_counter()
    with plan.open_slide() as slide:
        for row, col in plan.cells:
            read_pyramid(slide, plan.grid, plan.levels, row, col)
    return tile_cpu, tile_wall, time.process_time() - cpu, time.perf_counter() - wall


def alternate(pair: dict[str, str | Path], rounds: int, work: Path) -> Times:
    times: Times = {name: [] for name in pair}
    for name, target in pair.items():  # one untimed run each: imports, the first connection
        run(target, work / f"warm-{name}")
    for r in range(rounds):
        for name, target in pair.items():
            times[name].append(run(target, work / f"{name}-{r}"))
    return times


def show(times: Times, reference: str) -> None:
    base = [statistics.median(t[k] for t in times[reference]) for k in range(4)]
    for name, runs in times.items():
        m = [statistics.median(t[k] for t in runs) for k in range(4)]
        print(
            f"  {name:<24} tile: CPU {m[0]:5.2f} s ({m[0] / base[0]:4.2f}x) wall {m[1]:5.2f} s ({m[1] / base[1]:4.2f}x)"
            f" | cells: CPU {m[2]:5.2f} s ({m[2] / base[2]:4.2f}x) wall {m[3]:5.2f} s ({m[3] / base[3]:4.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"tile stage of {SVS.name} ({SVS.stat().st_size / 1e6:.1f} MB), median of {args.rounds} runs, 1 process")
        with s3_server_process() as endpoint, environment(**S3_ENV, AWS_ENDPOINT_URL=endpoint):
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("slides")
            fs.put(str(SVS), f"slides/{SVS.name}")
            pair = {"local SVS": SVS, "S3 (range reads)": f"s3://slides/{SVS.name}"}
            show(alternate(pair, args.rounds, work), "local SVS")
        folder = write_dicom(SVS, work / "CMU-1-dicom")
        try:
            with orthanc_server(work / "orthanc") as root:
                study, series = upload_dicom(root, folder)
                url = f"dicomweb+{root}/dicom-web/studies/{study}/series/{series}"
                show(
                    alternate({"local DICOM (OpenSlide)": folder, "DICOMweb (wsidicom)": url}, args.rounds, work),
                    "local DICOM (OpenSlide)",
                )
        except BaseException as exc:  # pytest.skip's exception when Orthanc is absent: say so, keep the S3 figures
            if type(exc).__name__ != "Skipped":
                raise
            print(f"  DICOMweb: skipped ({exc})")
    print("(S3: TiffSlide range requests in blocks of 1 MiB; DICOMweb: wsidicom fetches frames; servers on 127.0.0.1)")


if __name__ == "__main__":
    main()
