"""Speed and memory of the DuPLUS engine on this machine: writes BENCHMARKS.md and a JSON of the raw figures.

    python benchmarks/run_benchmarks.py                 # everything (about 10 minutes on 2 quiet cores)
    python benchmarks/run_benchmarks.py --only 2 3 5    # some items
    python benchmarks/run_benchmarks.py --quick         # small sizes, one repeat: a smoke run

Each figure is the median of several repeats after a warm-up, from one run on one machine; the
machine's cores and torch threads are printed with the table. Items follow issue 6:

1. segmentation time and peak RSS for three volume sizes (10 structures), and the slope against voxels
2. one backbone pass for 1, 5 and 20 prompts against the same prompts one pass each
3. the DuPLUS network against the same network without prompts, with one encoder block per level,
   and against MONAI's DynUNet: a batch of windows at the inference precision, as the sliding window runs them
4. end to end through the worker: a cold start against a warm worker
5. achieved FLOP rate of a forward pass against this machine's measured matrix-multiply peak
6. a 512 x 512 x 300 CT with 10 structures: wall time and peak RSS against 60 s and 4 GB
7. prognosis: fitting on 1,000 patients and predicting one, with and without image features
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TEN_STRUCTURES = [
    "CT/abdomen/liver", "CT/abdomen/spleen", "CT/abdomen/pancreas", "CT/abdomen/stomach",
    "CT/abdomen/kidney_left", "CT/abdomen/kidney_right", "CT/abdomen/aorta",
    "CT/abdomen/inferior_vena_cava", "CT/abdomen/gallbladder", "CT/abdomen/vertebrae",
]


# ---------------------------------------------------------------------------------- helpers
def median_time(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_times(runs: dict[Hashable, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[Hashable, float]:
    """Median seconds of each run, timed in turns (a, b, c, a, b, c, ...).

    A ratio of two medians taken one after the other carries any drift of the machine between
    them (other tenants, clocks); measured in turns, both sides see the same drift.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[Hashable, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def ct_volume(shape_ijk: tuple[int, int, int], spacing: tuple[float, float, float]):
    """A CT-like volume of the given size: the bundled sample phantom resampled onto that grid."""
    from DuPLUSLib.imageio import VolumeImage, read_image
    from DuPLUSLib.preprocessing import resample_onto
    from DuPLUSLib.samples import sample_volume_path

    sample = read_image(sample_volume_path())
    centre = sample.ijk_to_lps @ np.array([*(np.array(sample.shape_ijk) / 2), 1.0])
    extent = np.array(shape_ijk) * np.array(spacing)
    target = VolumeImage(np.zeros(shape_ijk[::-1], np.uint8), spacing, tuple(centre[:3] - extent / 2))
    return target.with_array(resample_onto(sample, target, "linear", -1000.0).astype(np.int16))


def load_model(model: str | None):
    from DuPLUSLib.bundle import load_bundle

    return load_bundle(model)


# ------------------------------------------------------------------------------------ items
def child_segment(args: argparse.Namespace) -> None:
    """Runs in a fresh process so its peak RSS is the segmentation's own."""
    from DuPLUSLib.inference import Segmenter

    shape = tuple(int(s) for s in args.shape.split("x"))
    image = ct_volume(shape, (0.8, 0.8, 1.5))
    segmenter = Segmenter(load_model(args.model), device="cpu")
    prompts = segmenter.parse_prompts(TEN_STRUCTURES)
    start = time.perf_counter()
    result = segmenter.segment(image, prompts)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_kb / 2**20, "voxels": int(np.prod(shape)),
                      "timings": result.timings}))


def run_child(model: str | None, shape: str) -> dict:
    command = [sys.executable, __file__, "--child", "segment", "--shape", shape]
    if model:
        command += ["--model", model]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


BIG_CT = "512x512x300"


def item_sizes(model, repeats, quick, big_repeats) -> dict:
    shapes = ["128x128x64", "256x256x150"] + ([] if quick else [BIG_CT])
    rows = []
    for shape in shapes:
        runs = [run_child(model, shape) for _ in range(big_repeats if shape == BIG_CT else repeats)]
        rows.append({
            "shape": shape,
            "runs": len(runs),
            "voxels": runs[0]["voxels"],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "stages": runs[0]["timings"],
        })
    voxels = np.array([r["voxels"] for r in rows], float)
    seconds = np.array([r["seconds"] for r in rows])
    slope = float(np.polyfit(voxels / 1e6, seconds, 1)[0]) if len(rows) > 1 else float("nan")
    return {"rows": rows, "seconds_per_megavoxel": slope}


def item_prompts(network, repeats) -> dict:
    size = network_patch(network)
    x = torch.randn(1, 1, *size)
    context = torch.randn(network.config.text_dim)
    prompts = {n: torch.randn(n, network.config.text_dim) for n in (1, 5, 20)}
    with torch.inference_mode():
        joint = interleaved_median_times(
            {n: (lambda targets=targets: network(x, "CT", context, targets)) for n, targets in prompts.items()},
            rounds=3 * repeats)
        rows = []
        for n, targets in prompts.items():
            separate = median_time(lambda: [network(x, "CT", context, targets[i:i + 1]) for i in range(n)], max(1, repeats // 2))
            rows.append({"prompts": n, "one_pass_s": joint[n], "separate_passes_s": separate})
    one = rows[0]["one_pass_s"]
    for row in rows:
        row["vs_one_prompt"] = row["one_pass_s"] / one
    return {"rows": rows, "goal": "20 prompts <= 1.3 x one prompt", "met": rows[-1]["vs_one_prompt"] <= 1.3}


WINDOW = [(96, 96, 96)]  # replaced in main() by the model's own inference window
WINDOW_BATCH = [1]  # replaced in main() by the model's own window batch


def network_patch(network) -> tuple[int, int, int]:
    return WINDOW[0]


def item_conditioning(network, repeats) -> dict:
    from monai.networks.nets import DynUNet

    from DuPLUSLib.network import DuPLUSNet

    config = network.config
    plain = DuPLUSNet(type(config)(**{**config.to_dict(), "conditioning": "none"})).eval()
    # what the DynUNet comparison costs in depth: the same network with one residual block per
    # encoder level, as DynUNet has (untrained: only its speed is measured)
    shallow = DuPLUSNet(type(config)(**{**config.to_dict(), "encoder_blocks": 1})).eval()
    channels = list(config.channels)
    dynunet = DynUNet(3, 1, 10, kernel_size=[3] * len(channels), strides=[1] + [2] * (len(channels) - 1),
                      upsample_kernel_size=[2] * (len(channels) - 1), filters=channels, res_block=True).eval()
    from DuPLUSLib.devices import autocast_dtype

    # as the sliding window runs them: a batch of windows, at the precision inference uses
    x = torch.randn(WINDOW_BATCH[0], 1, *network_patch(network))
    context = torch.randn(config.text_dim)
    targets = torch.randn(10, config.text_dim)
    precision = autocast_dtype(torch.device("cpu"))

    def as_inference(run: Callable[[], object]) -> Callable[[], object]:
        def timed() -> None:
            with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
                run()
        return timed

    with torch.inference_mode():
        seconds = interleaved_median_times({name: as_inference(run) for name, run in {
            "duplus": lambda: network(x, "CT", context, targets),
            "unconditioned": lambda: plain.head(plain.forward_features(x, "CT", context), targets),
            "backbone_only": lambda: plain.forward_features(x, "CT", context),
            "shallow": lambda: shallow(x, "CT", context, targets),
            "shallow_backbone": lambda: shallow.forward_features(x, "CT", context),
            "monai": lambda: dynunet(x),
        }.items()}, rounds=3 * repeats)
    duplus, backbone_only, monai = seconds["duplus"], seconds["backbone_only"], seconds["monai"]
    return {
        "duplus_s": duplus, "same_net_no_context_s": seconds["unconditioned"], "backbone_no_prompts_s": backbone_only,
        "monai_dynunet_s": monai, "rounds": 3 * repeats, "windows": WINDOW_BATCH[0],
        "precision": str(precision or torch.float32).replace("torch.", ""),
        "one_encoder_block_s": seconds["shallow"], "one_encoder_block_backbone_s": seconds["shallow_backbone"],
        "ratio_vs_no_prompts": duplus / backbone_only, "ratio_vs_dynunet": duplus / monai,
        "goal": "<= 1.15 x the same network without prompts", "met": duplus / backbone_only <= 1.15,
    }


def item_worker(model, repeats) -> dict:
    from DuPLUSLib.imageio import write_image

    folder = Path(tempfile.mkdtemp(prefix="duplus-bench-"))
    write_image(ct_volume((96, 96, 48), (1.5, 1.5, 3.0)), folder / "small.nrrd")

    def request(i: int) -> str:
        return json.dumps({"id": str(i), "input": str(folder / "small.nrrd"), "prompts": ["CT/abdomen/liver"],
                           "output": str(folder / f"out{i}.seg.nrrd"), "model": model, "device": "cpu",
                           "overwrite": True}) + "\n"

    def wait_done(process) -> None:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] in ("done", "error"):
                if event["event"] == "error":
                    raise RuntimeError(event["message"])
                return

    cold, warm = [], []
    for i in range(repeats):
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "DuPLUSLib.worker"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)
        process.stdin.write(request(2 * i))
        process.stdin.flush()
        wait_done(process)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        process.stdin.write(request(2 * i + 1))
        process.stdin.flush()
        wait_done(process)
        warm.append(time.perf_counter() - start)
        process.stdin.close()
        process.wait(timeout=30)
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    return {"cold_s": cold_s, "warm_s": warm_s, "speed_up": cold_s / warm_s,
            "goal": "warm second run >= 2 x faster", "met": cold_s / warm_s >= 2}


def matmul_peak(dtype: torch.dtype, repeats: int) -> float:
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = median_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds


def item_flops(network, repeats) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from DuPLUSLib.devices import autocast_dtype

    x = torch.randn(1, 1, *network_patch(network))
    context = torch.randn(network.config.text_dim)
    targets = torch.randn(10, network.config.text_dim)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(x, "CT", context, targets)
    flops = counter.get_total_flops()
    dtype = autocast_dtype(torch.device("cpu"))
    rows = {}
    for name, precision in (("fp32", None), ("bf16", torch.bfloat16)):
        def run():
            with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
                network(x, "CT", context, targets)
        with torch.inference_mode():
            seconds = median_time(run, repeats)
        peak = matmul_peak(precision or torch.float32, repeats)
        rows[name] = {"seconds": seconds, "gflops_per_s": flops / seconds / 1e9,
                      "matmul_peak_gflops_per_s": peak / 1e9, "fraction_of_peak": flops / seconds / peak}
    used = "bf16" if dtype == torch.bfloat16 else "fp32"
    return {"gflop_per_window": flops / 1e9, "window": list(network_patch(network)), "rows": rows,
            "precision_used_by_inference": used,
            "goal": ">= 30% of the matrix-multiply peak", "met": rows[used]["fraction_of_peak"] >= 0.3}


def item_ct(model, big_repeats, sizes: dict | None) -> dict:
    """The 512 x 512 x 300 case: item 1's measurement of it when item 1 ran, else its own runs."""
    measured = [row for row in (sizes or {}).get("rows", []) if row["shape"] == BIG_CT]
    if measured:
        row = measured[0]
        seconds, peak, stages, runs = row["seconds"], row["peak_rss_gb"], row["stages"], row["runs"]
    else:
        results = [run_child(model, BIG_CT) for _ in range(big_repeats)]
        seconds = statistics.median(r["seconds"] for r in results)
        peak, stages, runs = max(r["peak_rss_gb"] for r in results), results[0]["timings"], len(results)
    return {"seconds": seconds, "peak_rss_gb": peak, "stages": stages, "runs": runs,
            "goal": "<= 60 s and <= 4 GB", "met": seconds <= 60 and peak <= 4}


def item_prognosis(repeats) -> dict:
    """Fit on 1,000 patients and predict one, with and without the image block.

    The 1,000 patients are lifelines' larynx cohort drawn with replacement (times jittered so they
    are not tied), with tumour measurements simulated from stage: what is timed is the model, not
    the phantoms (1,000 head-and-neck phantoms would take longer to build than everything else).
    """
    from DuPLUSLib.prognosis.cohort import cohort_from_frame, larynx_frame
    from DuPLUSLib.prognosis.features import encode_patients
    from DuPLUSLib.prognosis.image_features import MEASUREMENT_NAMES
    from DuPLUSLib.prognosis.model import PrognosisConfig, PrognosisModel
    from DuPLUSLib.text import TextEncoder

    rng = np.random.default_rng(0)
    frame = larynx_frame()
    frame = frame.iloc[rng.integers(0, len(frame), 1000)].reset_index(drop=True)
    frame["patient_id"] = [f"p{i:04d}" for i in range(len(frame))]
    frame["time_years"] = (frame["time_years"] + rng.uniform(0.0, 0.05, len(frame))).round(3)
    cohort = cohort_from_frame(frame, "time_years", "death")
    stage = frame["stage"].map({"I": 1, "II": 2, "III": 3, "IV": 4}).to_numpy(float)
    image = np.stack([np.log1p(5 * stage + rng.gamma(2, 2, len(stage))), np.log1p(rng.gamma(1, 3, len(stage)) * (stage > 2)),
                      rng.normal(40, 10, len(stage))], axis=1)
    started = time.perf_counter()
    encoder = TextEncoder()
    inputs = encode_patients(cohort.records, encoder, image, MEASUREMENT_NAMES)
    encode_seconds = time.perf_counter() - started
    rows = {}
    for name, use in (("EHR (numbers + text)", ("numeric", "text")), ("EHR + image features", ("numeric", "text", "image"))):
        model = PrognosisModel(PrognosisConfig(use=use))
        fit = median_time(lambda: model.fit(inputs, cohort.time, cohort.event), repeats, warmup=0)
        one = inputs.subset([0])
        predict = median_time(lambda: (model.predict_risk(one),
                                       model.predict_survival_interval(one, [2.0, 5.0])), max(repeats, 5))
        rows[name] = {"fit_seconds": fit, "predict_one_seconds": predict}
    return {"patients": len(cohort), "events": int(cohort.event.sum()), "encode_seconds": encode_seconds,
            "rows": rows, "data": "larynx cohort drawn with replacement; tumour measurements simulated from stage"}


# ------------------------------------------------------------------------------------ report
def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Benchmarks", "",
             f"Measured by `python benchmarks/run_benchmarks.py` on {m['cores']} cores, torch {m['torch']} with "
             f"{m['torch_threads']} threads, model `{results['model']}`. Medians of {results['repeats']} repeats after a "
             "warm-up; raw figures in `benchmarks/results.json`.", ""]
    r = results["items"]
    if "1" in r:
        lines += ["## 1. Volume size (10 structures, CPU)", "", "| volume | voxels | seconds | peak RSS GB |", "|---|---:|---:|---:|"]
        lines += [f"| {row['shape']} | {row['voxels']:,} | {row['seconds']:.1f} | {row['peak_rss_gb']:.2f} |" for row in r["1"]["rows"]]
        lines += ["", f"Slope: {r['1']['seconds_per_megavoxel']:.2f} s per million input voxels.", ""]
    if "2" in r:
        lines += ["## 2. Prompts per backbone pass (one model window)", "",
                  "The one-pass times of 1, 5 and 20 prompts are timed in turns.", "",
                  "| prompts | one pass s | separate passes s | vs one prompt |", "|---:|---:|---:|---:|"]
        lines += [f"| {row['prompts']} | {row['one_pass_s']:.3f} | {row['separate_passes_s']:.3f} | {row['vs_one_prompt']:.2f}x |" for row in r["2"]["rows"]]
        lines += ["", f"Goal {r['2']['goal']}: {'met' if r['2']['met'] else 'missed'}.", ""]
    if "3" in r:
        c = r["3"]
        batch = (f"a batch of {c['windows']} model windows at {c['precision']}, as the sliding window runs them"
                 if "windows" in c else "one model window, fp32")
        lines += [f"## 3. Cost of conditioning ({batch}; 10 prompts)", "",
                  f"Medians of {c.get('rounds', results['repeats'])} rounds, the networks timed in turns.", "",
                  "| network | seconds |", "|---|---:|",
                  f"| DuPLUS (FiLM context + dynamic head) | {c['duplus_s']:.3f} |",
                  f"| same network, no context conditioning | {c['same_net_no_context_s']:.3f} |",
                  f"| same backbone, no prompts at all | {c['backbone_no_prompts_s']:.3f} |",
                  f"| MONAI DynUNet, same filters, one residual block per level (ours: two in the encoder) | {c['monai_dynunet_s']:.3f} |"]
        if "one_encoder_block_s" in c:
            lines += [f"| DuPLUS with one residual block per encoder level (untrained; speed only) | {c['one_encoder_block_s']:.3f} |",
                      f"| its backbone alone, no prompts | {c['one_encoder_block_backbone_s']:.3f} |"]
        lines += ["", f"DuPLUS / no prompts: {c['ratio_vs_no_prompts']:.2f}x; DuPLUS / DynUNet: {c['ratio_vs_dynunet']:.2f}x. "
                  f"Goal {c['goal']}: {'met' if c['met'] else 'missed'}."]
        if "one_encoder_block_s" in c:
            lines += ["", f"With one encoder block per level, as DynUNet: {c['one_encoder_block_s'] / c['monai_dynunet_s']:.2f}x "
                          f"DynUNet with 10 prompts, {c['one_encoder_block_backbone_s'] / c['monai_dynunet_s']:.2f}x for its backbone alone."]
        lines += [""]
    if "4" in r:
        w = r["4"]
        lines += ["## 4. Worker: cold start against warm", "", f"Cold (new process, model load): {w['cold_s']:.1f} s; "
                  f"warm second run: {w['warm_s']:.1f} s; {w['speed_up']:.1f}x. Goal {w['goal']}: {'met' if w['met'] else 'missed'}.", ""]
    if "5" in r:
        f = r["5"]
        lines += ["## 5. Achieved rate against the matrix-multiply peak", "",
                  f"{f['gflop_per_window']:.1f} GFLOP per {'x'.join(map(str, f['window']))} window (10 prompts).", "",
                  "| precision | seconds | GFLOP/s | matmul peak GFLOP/s | fraction |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['seconds']:.3f} | {v['gflops_per_s']:.0f} | {v['matmul_peak_gflops_per_s']:.0f} | {v['fraction_of_peak']:.0%} |" for k, v in f["rows"].items()]
        lines += ["", f"Inference uses {f['precision_used_by_inference']}. Goal {f['goal']}: {'met' if f['met'] else 'missed'}.", ""]
    if "6" in r:
        c = r["6"]
        lines += ["## 6. A 512 x 512 x 300 CT, 10 structures, CPU", "",
                  f"{c['seconds']:.1f} s wall ({c['runs']} run), {c['peak_rss_gb']:.2f} GB peak RSS; stages: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in c["stages"].items())
                  + f". Goal {c['goal']}: {'met' if c['met'] else 'missed'}.", ""]
    if "7" in r:
        p = r["7"]
        lines += ["## 7. Prognosis", "", f"{p['patients']:,} patients ({p['events']} events; {p['data']}). "
                  f"Encoding every EHR sentence once: {p['encode_seconds']:.1f} s.", "",
                  "| model | fit s | predict one s |", "|---|---:|---:|"]
        lines += [f"| {name} | {row['fit_seconds']:.2f} | {row['predict_one_seconds']:.4f} |" for name, row in p["rows"].items()]
        lines += [""]
    lines += ["Item 6 and item 1 time the segmentation call alone. What a user waits for, from process start to every "
              "file written on a real CT, with the stages and a MONAI DynUNet side by side: `benchmarks/end_to_end.py` "
              "([benchmarks/END_TO_END.md](benchmarks/END_TO_END.md) once run).", ""]
    lines += ["Where the time goes, what was changed with before/after figures, and what is left: "
              "[benchmarks/OPTIMISATION.md](benchmarks/OPTIMISATION.md).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--only", nargs="*", default=[str(i) for i in range(1, 8)])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--big-repeats", type=int, default=1,
                        help="runs of the 512 x 512 x 300 case (minutes each on 2 cores)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results.json"))
    parser.add_argument("--update", action="store_true",
                        help="re-measure only the --only items and keep the others of an existing --output")
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "segment":
        child_segment(args)
        return 0
    repeats = 1 if args.quick else args.repeats
    bundle = load_model(args.model)
    network = bundle.network.eval()
    WINDOW[0] = tuple(bundle.config.inference.patch_size)
    WINDOW_BATCH[0] = bundle.config.inference.window_batch
    results = {"machine": machine(), "model": args.model or "bundled default", "repeats": repeats, "items": {}}
    if args.update and Path(args.output).exists():
        earlier = json.loads(Path(args.output).read_text(encoding="utf-8"))
        if (earlier["machine"], earlier["model"]) != (results["machine"], results["model"]):
            raise SystemExit(f"{args.output} was measured on another machine or model; run every item instead")
        results["items"] = earlier["items"]
    print(json.dumps(results["machine"]))
    steps = {
        "1": lambda: item_sizes(args.model, repeats, args.quick, args.big_repeats),
        "2": lambda: item_prompts(network, repeats),
        "3": lambda: item_conditioning(network, repeats),
        "4": lambda: item_worker(args.model, repeats),
        "5": lambda: item_flops(network, repeats),
        "6": lambda: item_ct(args.model, args.big_repeats, results["items"].get("1")),
        "7": lambda: item_prognosis(repeats),
    }
    for key in args.only:
        if key == "6" and args.quick:
            continue
        print(f"item {key} ...", flush=True)
        results["items"][key] = steps[key]()
    Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")
    text = markdown(results)
    Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
