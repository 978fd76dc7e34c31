"""jaxdiff against the C program's timings on problems P1–P4 (../shared/baselines).

For each problem and dtype, in a fresh process each: compile time, steady-state time of the
jitted simulate (median of warm runs), evaluations per second (pixels × sub-pixels × sources ×
φ × mosaic), peak resident memory, and forward+gradient cost; then the whole-process CLI time
with an empty and with a warm persistent compilation cache. Writes benchmarks/RESULTS.md.

    python benchmarks/run.py                 # everything
    python benchmarks/run.py --only P1 P3    # a subset
    python benchmarks/run.py --c-binary PATH # also time a C nanoBragg build in the same run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _golden import GOLDEN

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INPUTS = GOLDEN / "inputs"

SUPERVISOR = (
    "-mat A.mat -hkl scaled.hkl -nonoise -nointerpolate -oversample 1 -exposure 1 -flux 1e18 "
    "-beamsize 1.0 -spindle_axis -1 0 0 -Xbeam 217.742295 -Ybeam 213.907080 -distance 231.274660 "
    "-lambda 0.976800 -pixel 0.172 -detpixels_x 2463 -detpixels_y 2527 "
    "-odet_vector -0.000088 0.004914 -0.999988 -sdet_vector -0.005998 -0.999970 -0.004913 "
    "-fdet_vector 0.999982 -0.005998 -0.000118 -pix0_vector_mm -216.336293 215.205512 -230.200866 "
    "-beam_vector 0.00051387949 0.0 -0.99999986 -Na 36 -Nb 47 -Nc 29 -osc 0.1 -phi 0 -phisteps 10 "
    "-detector_rotx 0 -detector_roty 0 -detector_rotz 0 -twotheta 0"
)
P1 = (
    "-cell 100 100 100 90 90 90 -default_F 100 -N 5 -lambda 6.2 -distance 100 -detpixels 1024 "
    "-nonoise -nopgm"
)
P3 = (
    "-cell 70 80 90 85 95 105 -misset 10 5 3 -default_F 100 -N 8 -lambda 1.5 -distance 100 "
    "-detpixels 512 -phi 0 -osc 1 -phisteps 10 -mosaic 0.5 -mosaic_dom 10 -oversample 2"
)
PROBLEMS = {
    "P1": P1,
    "P2": P1.replace("-detpixels 1024", "-detpixels 2048"),
    "P3": P3,
    "P4": SUPERVISOR,
    "P4-roi": SUPERVISOR + " -roi 600 727 1000 1127",
    "P5": P3.replace("-detpixels 512", "-detpixels 2048") + " -nonoise -nopgm",
}
# C program, 2 threads, median wall [s] (c-parity binary, ../shared/baselines/c_baseline.md)
C_BASELINE = {"P1": 0.093, "P2": 0.323, "P3": 4.531, "P4": 3.815}


def _scratch() -> Path:
    work = Path(tempfile.mkdtemp(prefix="jaxdiff-bench-"))
    for name in ("A.mat", "scaled.hkl"):
        shutil.copy(INPUTS / name, work / name)
    return work


def worker(problem: str, dtype: str, repeats: int, grad: bool) -> dict:
    """Run inside a fresh process: time compile, steady state and (optionally) gradients."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from jaxdiff import build, simulate

    setup = build(PROBLEMS[problem].split(), cwd=_scratch())
    cfg = dataclasses.replace(setup.config, dtype=dtype)
    exp = setup.experiment
    start = time.perf_counter()
    simulate(exp, cfg).block_until_ready()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        simulate(exp, cfg).block_until_ready()
        times.append(time.perf_counter() - start)
    steady = statistics.median(times)
    ns, nf = cfg.roi_shape
    evals = ns * nf * setup.steps
    out = dict(
        problem=problem,
        dtype=dtype,
        compile_s=first - steady,
        steady_s=steady,
        evals=evals,
        evals_per_s=evals / steady,
    )
    if grad:

        def loss(rot):
            crystal = dataclasses.replace(exp.crystal, rotation=rot)
            return jnp.sum(simulate(dataclasses.replace(exp, crystal=crystal), cfg))

        # against the same loss without its gradient (XLA may sum a region's image without
        # forming the full-size image, in both), the two taking turns
        calls = {"loss": jax.jit(loss), "grad": jax.jit(jax.value_and_grad(loss))}
        rot = jnp.zeros(3)
        for fn in calls.values():
            jax.block_until_ready(fn(rot))
        spent = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(rot))
                spent[name].append(time.perf_counter() - start)
        out["grad_s"] = statistics.median(spent["grad"])
        out["grad_ratio"] = out["grad_s"] / statistics.median(spent["loss"])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _spawn(args: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def cli_time(problem: str, cache: Path, runs: int) -> list[float]:
    """Whole-process wall time of the jaxdiff command (jaxdiff's own persistent cache)."""
    work = _scratch()
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(cache))
    exe = shutil.which("jaxdiff") or sys.executable
    cmd = [exe] if exe != sys.executable else [exe, "-m", "jaxdiff.cli"]
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            cmd + PROBLEMS[problem].split(), cwd=work, env=env, capture_output=True, check=True
        )
        out.append(time.perf_counter() - start)
    return out


def c_time(binary: str, problem: str, runs: int) -> float:
    work = _scratch()
    env = dict(os.environ, OMP_NUM_THREADS="2")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [binary] + PROBLEMS[problem].split(), cwd=work, env=env, capture_output=True, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(PROBLEMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--c-binary")
    parser.add_argument("--worker", nargs=2, metavar=("PROBLEM", "DTYPE"))
    parser.add_argument("--grad", action="store_true")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--extras",
        nargs="*",
        default=["noise", "datasets", "gradients"],
        help="whole-process and gradient benchmarks to add (noise, datasets, gradients)",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.grad)))
        return 0

    import jax

    device = jax.devices()[0]
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        f", JAX {jax.__version__} on {device.platform} ({device.device_kind})"
    )
    rows, cli_rows = [], []
    for problem in args.only:
        c_ref = C_BASELINE.get(problem.split("-")[0])
        c_now = (
            c_time(args.c_binary, problem, 3) if args.c_binary and problem in C_BASELINE else None
        )
        for dtype in ("float64", "float32"):
            grad = problem in ("P1", "P3", "P4-roi")
            r = _spawn(
                ["--worker", problem, dtype, "--repeats", str(args.repeats)]
                + (["--grad"] if grad else [])
            )
            r.update(problem=problem, dtype=dtype, c_baseline=c_ref, c_now=c_now)
            rows.append(r)
            print(json.dumps(r), flush=True)
        if problem in ("P1", "P3"):
            cache = Path(tempfile.mkdtemp(prefix="jaxdiff-cache-"))
            cold = cli_time(problem, cache, 1)[0]
            warm = statistics.median(cli_time(problem, cache, 3))
            cli_rows.append((problem, cold, warm, c_ref))
            print(problem, "cli cold", cold, "warm", warm, flush=True)
    extras = run_extras(args.extras, args.c_binary, args.repeats)
    Path(args.output).write_text(_report(machine, rows, cli_rows, args) + _extras_report(extras))
    print(f"wrote {args.output}")
    return 0


def run_extras(names: list[str], c_binary: str | None, repeats: int) -> dict:
    """The default path's figures from the other scripts here, measured in this run."""
    sys.path.insert(0, str(HERE))
    out = {}
    for name in names:
        module = __import__(name)
        if name == "noise":
            out[name] = module.measure(repeats)
        elif name == "datasets":
            out[name] = module.measure(c_binary, repeats)
        else:
            out[name] = module.measure(repeats)
        print(name, json.dumps(out[name], default=str), flush=True)
    return out


def _extras_report(extras: dict) -> str:
    lines = []

    def add(name, measured, met):
        lines.append(f"| {name} | {measured} | {'met' if met else 'missed'} |")

    if extras:
        lines += ["", "Default path, datasets and gradients (same run):", ""]
        lines += ["| target | measured | status |", "|---|---|---|"]
    if (n := extras.get("noise")) is not None:
        add(
            "-noisefile ≤ 1.25× the time without, whole process, 2048²",
            f"{n['cli_ratio']:.2f}× ({n['cli_noise_s']:.2f} s / {n['cli_nonoise_s']:.2f} s); "
            f"noise of a 2463×2527 frame {n['noise_pilatus_s']:.2f} s",
            n["cli_ratio"] <= 1.25,
        )
    if (d := extras.get("datasets")) is not None and "frames_speedup" in d:
        add(
            f"{d['frames']} frames of 512×480 (--frames) faster than {d['frames']} C runs",
            f"{d['frames_speedup']:.2f}× (jaxdiff {d['jaxdiff_frames_s']:.2f} s, cold "
            f"{d['jaxdiff_frames_cold_s']:.2f} s; C {d['c_frames_s']:.2f} s)",
            d["frames_speedup"] > 1.0,
        )
        add(
            f"{d['lines']} 1024² command lines (--commands) ≥ 2× faster than {d['lines']} C runs",
            f"{d['commands_speedup']:.2f}× (jaxdiff {d['jaxdiff_commands_s']:.2f} s, cold "
            f"{d['jaxdiff_commands_cold_s']:.2f} s; C {d['c_commands_s']:.2f} s)",
            d["commands_speedup"] >= 2.0,
        )
    for row in (extras.get("gradients") or {}).get("rows", []):
        add(
            f"forward + gradient ≤ 3× forward: {row['name']}",
            f"{row['ratio']:.2f}×",
            row["ratio"] <= 3.0,
        )
    return "\n".join(lines) + ("\n" if lines else "")


def _report(machine, rows, cli_rows, args) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine}. Written by `python benchmarks/run.py` on "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.repeats} warm runs, each problem and "
        "dtype in a fresh process. The C figures are the 2-thread medians of "
        "`../shared/baselines/c_baseline.md`"
        + (
            "; in brackets, a local C build timed in the same run. Speed-ups are against the "
            "faster of the two"
            if args.c_binary
            else ""
        )
        + ". fwd+grad / fwd: `jax.value_and_grad` of the image's sum with respect to the "
        "crystal's rotation over the jitted sum alone.",
        "",
        "| problem | dtype | compile [s] | steady [s] | M evals/s | peak RSS [MB] | "
        "fwd+grad / fwd | C 2 threads [s] | C / jaxdiff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['dtype']} | error: {r['error']} |||||||")
            continue
        c = _c_time(r)
        speed = f"{c / r['steady_s']:.1f}×" if c and "-" not in r["problem"] else ""
        grad = f"{r['grad_ratio']:.2f}" if "grad_ratio" in r else ""
        c_text = ""
        if c:
            c_text = f"{r['c_baseline']}" + (f" ({r['c_now']:.3f})" if r.get("c_now") else "")
        lines.append(
            f"| {r['problem']} | {r['dtype']} | {r['compile_s']:.2f} | {r['steady_s']:.3f} | "
            f"{r['evals_per_s'] / 1e6:.0f} | {r['peak_rss_mb']:.0f} | {grad} | "
            f"{c_text} | {speed} |"
        )
    lines += [
        "",
        "Whole-process CLI (`jaxdiff <flags>`, float64, files written):",
        "",
        "| problem | cold cache [s] | warm cache [s] | C 2 threads [s] |",
        "|---|---|---|---|",
    ]
    for problem, cold, warm, c in cli_rows:
        lines.append(f"| {problem} | {cold:.2f} | {warm:.2f} | {c} |")
    lines += ["", *_targets(rows, cli_rows)]
    return "\n".join(lines) + "\n"


def _c_time(r: dict) -> float | None:
    """The C program's time for a row: the faster of the baseline and this run's build."""
    times = [t for t in (r.get("c_baseline"), r.get("c_now")) if t]
    return min(times) if times else None


def _targets(rows, cli_rows) -> list[str]:
    """The performance issue's targets, judged from this run's figures."""
    ok = {r["problem"] + "/" + r["dtype"]: r for r in rows if "error" not in r}
    out = [
        "Against the targets (this machine; GPU targets are measured by `gpu_suite.py`):",
        "",
        "| target | measured | status |",
        "|---|---|---|",
    ]

    def add(name, measured, met):
        out.append(f"| {name} | {measured} | {'met' if met else 'missed'} |")

    if (r := ok.get("P3/float32")) is not None:
        rate = r["evals_per_s"] / 1e6
        add("P3 float32 ≥ 400 M evaluations/s", f"{rate:.0f} M/s", rate >= 400)
    for problem in ("P3", "P4"):
        if (r := ok.get(f"{problem}/float64")) is not None:
            c = _c_time(r)
            if c:
                add(
                    f"{problem} float64 ≥ 5× the C program (2 threads)",
                    f"{c / r['steady_s']:.1f}× (C {c:.2f} s)",
                    c / r["steady_s"] >= 5.0,
                )
    for problem, cold, warm, _ in cli_rows:
        if problem == "P1":
            add("CLI P1 ≤ 1.0 s, warm cache", f"{warm:.2f} s", warm <= 1.0)
        add(f"CLI {problem} cold compile ≤ 5 s", f"{cold:.2f} s", cold <= 5.0)
    full, roi = ok.get("P4/float64"), ok.get("P4-roi/float64")
    if full and roi:
        share = roi["evals"] / full["evals"]
        add(
            "-roi costs in proportion to the ROI",
            f"{share:.2%} of the pixels, {roi['steady_s'] / full['steady_s']:.2%} of the time",
            roi["steady_s"] / full["steady_s"] < 10 * share + 0.05,
        )
    if ok:
        peak = max(r["peak_rss_mb"] for r in ok.values())
        add("peak memory ≤ 2 GB (incl. P5)", f"≤ {peak:.0f} MB", peak <= 2048)
        slow = max(r["compile_s"] for r in ok.values())
        add("compile ≤ 10 s", f"≤ {slow:.1f} s", slow <= 10.0)
    for key, r in ok.items():
        if "grad_ratio" in r:
            add(
                f"forward + gradient ≤ 4× forward ({key})",
                f"{r['grad_ratio']:.2f}×",
                r["grad_ratio"] <= 4.0,
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
