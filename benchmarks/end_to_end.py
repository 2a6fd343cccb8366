"""What a user waits for: ``duplus segment`` from process start to every file written, on a real CT.

    python benchmarks/end_to_end.py                       # the bundled real CT at 512 x 512 x 300, 10 structures
    python benchmarks/end_to_end.py --ct /path/to/ct-series-or-file
    python benchmarks/end_to_end.py --ct CT --shape 128x128x75 --sizes 64x64x40,128x128x75 --rounds 1   # a smoke run

The CT (a file or a DICOM series folder; by default the bundled real abdomen CT, TotalSegmentator's
example scan) is resampled to ``--shape`` over its own extent and saved as NRRD, outside the timing. Then, in turns (``--rounds`` times each):

* the real command, ``python -m DuPLUSLib.cli segment CT -p ... -o out.seg.nrrd --progress json``,
  timed from starting the process to its exit, with the child's own peak RSS (``wait4``); the
  stages come from the command's report (reading, model loading, preprocessing, inference,
  resampling back, writing) and "start-up" is the rest (interpreter, imports);
* a plain MONAI DynUNet (residual blocks, the same filters as the model, one output per
  structure) doing sliding-window inference over the same model grid, with the same windows,
  overlap, window batch, Gaussian blending and autocast: only the inference call is timed.

``--sizes`` runs the command at more sizes (``--rounds`` times each, the median kept) for the slope of
time against voxels. ``--sweep resample`` (the default) resamples the whole CT to each size, so the
extent and the model grid stay the same and only the input's voxels change; ``--sweep stack`` keeps
the spacing of ``--shape`` and makes a scan of each size's slice count from that volume (its first
slices, or the volume repeated along its slice axis for a longer scan; a central crop in-plane),
so the extent, the model grid and the voxels grow together, as from a short scan to a long one.
Window counts grow in steps of a window's span (192 mm at 4 mm), so compare sizes a span or more
apart. Goals
(issue 14, on 2 cores at 512 x 512 x 300 with 10 structures): resampling back + writing <= 25 %
of the wall time; the command <= 1.5 x the DynUNet's inference; peak RSS <= 2 GB; a linear slope.
Figures go to ``--output`` (JSON) and ``--markdown``, and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEN_STRUCTURES = [
    "CT/abdomen/liver", "CT/abdomen/spleen", "CT/abdomen/pancreas", "CT/abdomen/stomach",
    "CT/abdomen/kidney_left", "CT/abdomen/kidney_right", "CT/abdomen/aorta",
    "CT/abdomen/inferior_vena_cava", "CT/abdomen/gallbladder", "CT/abdomen/vertebrae",
]
STAGES = ["start-up", "reading", "model_loading", "preprocessing", "inference", "postprocessing", "writing"]


# ------------------------------------------------------------------------------------ input
def prepare_ct(source: str | None, shape: tuple[int, int, int], folder: Path) -> Path:
    """The CT resampled onto ``shape`` voxels (i, j, k) over its own extent, as int16 NRRD."""
    sys.path.insert(0, str(ROOT))
    from DuPLUSLib.imageio import VolumeImage, read_image, write_image
    from DuPLUSLib.preprocessing import resample_onto
    from DuPLUSLib.samples import real_sample_path

    image = read_image(source or real_sample_path())
    extent = np.array(image.shape_ijk) * np.array(image.spacing)
    spacing = extent / np.array(shape)
    first_corner = image.ijk_to_lps @ np.array([-0.5, -0.5, -0.5, 1.0])
    origin = first_corner[:3] + image.direction @ (spacing / 2)
    target = VolumeImage(np.zeros(shape[::-1], np.uint8), tuple(spacing), tuple(origin), image.direction)
    array = resample_onto(image, target, "linear", float(image.array.min()))
    path = folder / f"ct-{'x'.join(map(str, shape))}.nrrd"
    write_image(target.with_array(np.round(array).astype(np.int16)), path)
    return path


def stack_of(full: Path, size: tuple[int, int, int], folder: Path) -> Path:
    """A scan of ``k`` slices at the prepared CT's spacing, cropped centrally to ``i x j``: its first
    ``k`` slices, or for a longer scan than the CT, the CT repeated along its slice axis."""
    from DuPLUSLib.imageio import VolumeImage, read_image, write_image

    image = read_image(full)
    shape_ijk = np.array(image.shape_ijk)
    if np.any(np.array(size[:2]) > shape_ijk[:2]):
        raise SystemExit(f"--sweep stack: size {size} is wider than --shape {tuple(shape_ijk)}")
    start = np.array([(shape_ijk[0] - size[0]) // 2, (shape_ijk[1] - size[1]) // 2, 0])
    slices = np.arange(size[2]) % shape_ijk[2]
    array = image.array[slices][:, start[1] : start[1] + size[1], start[0] : start[0] + size[0]]
    origin = image.ijk_to_lps @ np.array([*start, 1.0])
    path = folder / f"ct-stack-{'x'.join(map(str, size))}.nrrd"
    write_image(VolumeImage(np.ascontiguousarray(array), image.spacing, tuple(origin[:3]), image.direction), path)
    return path


# ------------------------------------------------------------------------------------ runs
def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds from start to exit, the child's peak RSS in GB, and its stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{stderr[-2000:]}")
    peak_gb = usage.ru_maxrss / 2**20  # kB on Linux
    return seconds, peak_gb, stdout


def run_duplus(ct: Path, prompts: list[str], model: str | None, folder: Path, env: dict[str, str]) -> dict:
    output = folder / "out.seg.nrrd"
    command = [sys.executable, "-m", "DuPLUSLib.cli", "segment", str(ct), "-o", str(output), "--device", "cpu",
               "--progress", "json", "--overwrite"]
    for prompt in prompts:
        command += ["-p", prompt]
    if model:
        command += ["--model", model]
    seconds, peak, stdout = run_child(command, env)
    done = json.loads(stdout.strip().splitlines()[-1])
    stages = {k: float(v) for k, v in done["timings_s"].items()}
    stages["start-up"] = max(0.0, seconds - sum(stages.values()))
    voxels_found = sum(s["voxels"] for s in done["segments"])
    return {"seconds": seconds, "peak_rss_gb": peak, "stages": stages, "voxels_found": voxels_found,
            "output_mb": output.stat().st_size / 1e6}


def run_dynunet(ct: Path, prompts: int, model: str | None, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--child", "dynunet", "--grid", str(ct), "--structures", str(prompts)]
    if model:
        command += ["--model", model]
    seconds, peak, stdout = run_child(command, env)
    figures = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": figures["inference_s"], "process_seconds": seconds, "peak_rss_gb": peak,
            "windows": figures["windows"], "grid": figures["grid"]}


def child_dynunet(args: argparse.Namespace) -> None:
    """The peer: MONAI's DynUNet over the model grid of the same CT, the same sliding window."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DynUNet

    sys.path.insert(0, str(ROOT))
    from DuPLUSLib.bundle import load_bundle
    from DuPLUSLib.devices import autocast_dtype
    from DuPLUSLib.imageio import read_image
    from DuPLUSLib.preprocessing import DEFAULT_NORMALISATION, normalise_intensity, resample_to_spacing

    bundle = load_bundle(args.model)
    settings = bundle.config.inference
    channels = list(bundle.network.config.channels)
    network = DynUNet(3, 1, args.structures, kernel_size=[3] * len(channels), strides=[1] + [2] * (len(channels) - 1),
                      upsample_kernel_size=[2] * (len(channels) - 1), filters=channels, res_block=True).eval()
    grid = resample_to_spacing(read_image(args.grid), settings.spacing)
    tensor = torch.from_numpy(normalise_intensity(grid.array, DEFAULT_NORMALISATION["CT"]))[None, None]
    dtype = autocast_dtype(torch.device("cpu"))
    windows = [0]

    def predict(x):
        windows[0] += 1
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return torch.sigmoid(network(x).float())

    with torch.inference_mode():
        started = time.perf_counter()
        sliding_window_inference(tensor, settings.patch_size, settings.window_batch, predict,
                                 overlap=settings.overlap, mode="gaussian", padding_mode="constant",
                                 cval=float(tensor.min()))
        seconds = time.perf_counter() - started
    print(json.dumps({"inference_s": seconds, "windows": windows[0] * settings.window_batch,
                      "grid": list(grid.shape_ijk)}))


# ------------------------------------------------------------------------------------ report
def summarise(duplus: list[dict], peer: list[dict], sizes: list[dict], shape: str, prompts: list[str]) -> dict:
    seconds = statistics.median(r["seconds"] for r in duplus)
    stages = {name: statistics.median(r["stages"].get(name, 0.0) for r in duplus) for name in STAGES}
    peak = max(r["peak_rss_gb"] for r in duplus)
    peer_seconds = statistics.median(r["seconds"] for r in peer)
    back_and_write = stages["postprocessing"] + stages["writing"]
    slope = None
    if len(sizes) >= 2:
        voxels = np.array([s["voxels"] for s in sizes], float) / 1e6
        times = np.array([s["seconds"] for s in sizes])
        fit = np.polyfit(voxels, times, 1)
        predicted = np.polyval(fit, voxels)
        r2 = 1 - ((times - predicted) ** 2).sum() / max(((times - times.mean()) ** 2).sum(), 1e-12)
        marginal = [float((t - times[0]) / (v - voxels[0])) if v > voxels[0] else None
                    for v, t in zip(voxels[1:], times[1:])]
        slope = {"seconds_per_megavoxel": float(fit[0]), "intercept_s": float(fit[1]), "r2": float(r2),
                 "marginal_s_per_megavoxel": [None, *marginal]}
    goals = {
        "resample back + writing <= 25% of wall": (back_and_write / seconds, back_and_write / seconds <= 0.25),
        "command <= 1.5 x DynUNet sliding window": (seconds / peer_seconds, seconds / peer_seconds <= 1.5),
        "peak RSS <= 2 GB": (peak, peak <= 2.0),
    }
    if slope:
        goals["slope linear (R^2 >= 0.98)"] = (slope["r2"], slope["r2"] >= 0.98)
    # The 1.5x goal compares a whole command with an inference call alone: what the command does
    # besides inference (starting Python and torch, reading, writing) counts against it whatever
    # the network, so it is reported on its own, beside the like-for-like inference ratio.
    # (The command's inference stage also normalises intensities, which the peer's timing leaves out.)
    besides_inference = statistics.median(r["seconds"] - r["stages"]["inference"] for r in duplus)
    ratios = {"inference / DynUNet inference": stages["inference"] / peer_seconds,
              "command without inference / DynUNet inference": besides_inference / peer_seconds}
    return {"shape": shape, "structures": len(prompts), "prompts": prompts, "rounds": len(duplus),
            "seconds": seconds, "stages": stages, "peak_rss_gb": peak, "dynunet_seconds": peer_seconds,
            "dynunet_windows": peer[0]["windows"], "model_grid": peer[0]["grid"],
            "voxels_found": duplus[0]["voxels_found"], "output_mb": duplus[0]["output_mb"],
            "goals": {k: {"value": v, "met": bool(m)} for k, (v, m) in goals.items()}, "ratios": ratios,
            "dynunet_process_seconds": statistics.median(r["process_seconds"] for r in peer),
            "sizes": sizes, "slope": slope, "runs": {"duplus": duplus, "dynunet": peer}}


def markdown(result: dict, machine: dict) -> str:
    lines = [f"## End to end: {result['shape']} CT, {result['structures']} structures", "",
             f"{machine['cores']} cores, torch {machine['torch']} with {machine['threads']} threads; medians of "
             f"{result['rounds']} run(s), `duplus segment` and the DynUNet peer timed in turns. CT: {machine['ct']}.", "",
             "| stage | seconds | share |", "|---|---:|---:|"]
    for name in STAGES:
        value = result["stages"][name]
        lines.append(f"| {name} | {value:.1f} | {value / result['seconds']:.0%} |")
    lines += [f"| **whole command (process start to files written)** | **{result['seconds']:.1f}** | 100% |", "",
              f"Peak RSS {result['peak_rss_gb']:.2f} GB. Output {result['output_mb']:.1f} MB; "
              f"{result['voxels_found']:,} voxels found. Model grid {'x'.join(map(str, result['model_grid']))}, "
              f"{result['dynunet_windows']} windows. Plain MONAI DynUNet sliding window over the same grid and windows: "
              f"{result['dynunet_seconds']:.1f} s.", "", "| goal | value | met |", "|---|---:|---|"]
    for name, goal in result["goals"].items():
        value = goal["value"]
        shown = f"{value:.0%}" if "25%" in name else f"{value:.2f}"
        lines.append(f"| {name} | {shown} | {'yes' if goal['met'] else 'no'} |")
    if "ratios" in result:
        ratios = result["ratios"]
        lines += ["", "Where the 1.5x goes: the command's inference is "
                      f"{ratios['inference / DynUNet inference']:.2f}x DynUNet's; everything else it does (start-up, "
                      f"reading, model loading, preprocessing, resampling back, writing) already takes "
                      f"{ratios['command without inference / DynUNet inference']:.2f}x DynUNet's inference, with no "
                      "network at all. The DynUNet child process itself (which imports MONAI) ran "
                      f"{result['dynunet_process_seconds']:.1f} s from start to exit."]
    if result["sizes"]:
        made = {"resample": "the whole CT resampled to each size: the extent and the model grid stay the same",
                "stack": "scans of more or fewer slices at the main volume's spacing (its first slices, or it repeated "
                          "along its slice axis): extent, model grid and voxels grow together"}
        lines += ["", f"Sizes (`--sweep {result.get('sweep', 'resample')}`): {made[result.get('sweep', 'resample')]}.", "",
                  "| volume | voxels | seconds | s per megavoxel beyond the smallest |", "|---|---:|---:|---:|"]
        marginal = (result["slope"] or {}).get("marginal_s_per_megavoxel") or [None] * len(result["sizes"])
        for size, m in zip(result["sizes"], marginal):
            lines.append(f"| {size['shape']} | {size['voxels']:,} | {size['seconds']:.1f} | {'-' if m is None else f'{m:.3f}'} |")
        if result["slope"]:
            lines += ["", f"Fit: {result['slope']['seconds_per_megavoxel']:.3f} s per megavoxel + "
                          f"{result['slope']['intercept_s']:.1f} s, R² {result['slope']['r2']:.3f}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", help="a CT file or DICOM series folder (default: the bundled real abdomen CT)")
    parser.add_argument("--shape", default="512x512x300")
    parser.add_argument("--sizes", default="128x128x75,256x256x150,512x512x300",
                        help="comma-separated sizes for the slope ('' to skip)")
    parser.add_argument("--prompt", action="append", dest="prompts", help="default: 10 CT abdomen structures")
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--sweep", choices=["resample", "stack"], default="resample",
                        help="how --sizes are made: the whole CT resampled, or a stack of the first slices")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the children")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "end_to_end.json"))
    parser.add_argument("--markdown", default=str(ROOT / "benchmarks" / "END_TO_END.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    parser.add_argument("--structures", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "dynunet":
        child_dynunet(args)
        return 0
    import torch

    prompts = args.prompts or TEN_STRUCTURES
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])}
    folder = Path(tempfile.mkdtemp(prefix="duplus-e2e-"))
    shape = tuple(int(v) for v in args.shape.split("x"))
    print(f"preparing {args.shape} from {args.ct or 'the bundled real CT'} in {folder}", file=sys.stderr)
    ct = prepare_ct(args.ct, shape, folder)
    duplus, peer = [], []
    for round_ in range(args.rounds):
        duplus.append(run_duplus(ct, prompts, args.model, folder, env))
        peer.append(run_dynunet(ct, len(prompts), args.model, env))
        print(f"round {round_ + 1}: duplus {duplus[-1]['seconds']:.1f} s ({duplus[-1]['peak_rss_gb']:.2f} GB), "
              f"DynUNet {peer[-1]['seconds']:.1f} s", file=sys.stderr)
    sizes = []
    for text in [s for s in args.sizes.split(",") if s.strip()]:
        size = tuple(int(v) for v in text.split("x"))
        if size == shape:
            run = {"seconds": statistics.median(r["seconds"] for r in duplus),
                   "peak_rss_gb": max(r["peak_rss_gb"] for r in duplus)}
        else:  # as many runs as the main size, so one slow run does not bend the slope
            path = stack_of(ct, size, folder) if args.sweep == "stack" else prepare_ct(args.ct, size, folder)
            runs = [run_duplus(path, prompts, args.model, folder, env) for _ in range(args.rounds)]
            run = {"seconds": statistics.median(r["seconds"] for r in runs), "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
        sizes.append({"shape": text, "voxels": int(np.prod(size)), "seconds": run["seconds"], "peak_rss_gb": run["peak_rss_gb"]})
        print(f"size {text}: {run['seconds']:.1f} s", file=sys.stderr)
    result = summarise(duplus, peer, sizes, args.shape, prompts)
    result["sweep"] = args.sweep
    machine = {"cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "ct": args.ct or "the bundled real abdomen CT (TotalSegmentator's example scan)"}
    Path(args.output).write_text(json.dumps({"machine": machine, **result}, indent=2) + "\n", encoding="utf-8")
    text = markdown(result, machine)
    Path(args.markdown).write_text("# " + text.lstrip("# "), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
