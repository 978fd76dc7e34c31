"""Cost of image gradients against the forward image, per parameter group (in-process, warm).

For each problem and dtype: the jitted forward sum of the image, and the jitted
``value_and_grad`` of that sum with respect to each group of parameters; the figure is the
median time of the gradient over the median time of the forward (medians of ``repeats`` warm
runs, all in the same process so that ratios are comparable on a shared machine).

Groups: ``orientation`` (crystal.rotation and crystal.ncells), ``cell`` (crystal.cell, or the A
matrix for problems that read one), ``detector`` (distance, beam centre, detector rotations).
Problems: P3 and P1 of ``run.py``, and the supervisor command over a 128 × 128 region around
bright spots (``SUPERVISOR_ROI``: fast 832–959, slow 1216–1343; it holds 53 spots, groups of
pixels above the full image's 99.9th percentile, the most of any such region).

    python benchmarks/gradients.py                     # everything, medians of 3
    python benchmarks/gradients.py --only P3 --dtype float32 --roi 0 127 0 127
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SUPERVISOR_ROI = "-roi 832 959 1216 1343"
GROUPS = {
    "orientation": (("crystal", "rotation"), ("crystal", "ncells")),
    "cell": (("crystal", "cell"),),
    "detector": (
        ("detector", "distance"),
        ("detector", "beam_f"),
        ("detector", "beam_s"),
        ("detector", "rotations"),
    ),
}


def _problems() -> dict[str, str]:
    from run import PROBLEMS, SUPERVISOR

    return {
        "P3": PROBLEMS["P3"],
        "P1": PROBLEMS["P1"],
        "supervisor-roi": f"{SUPERVISOR} {SUPERVISOR_ROI}",
    }


def _replace(exp, path, value):
    if len(path) == 1:
        return dataclasses.replace(exp, **{path[0]: value})
    return dataclasses.replace(exp, **{path[0]: _replace(getattr(exp, path[0]), path[1:], value)})


def _timed(calls: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each ``name: (fn, arg)``, warm; the calls take turns, so that a
    change in the machine's load reaches all of them alike."""
    import jax

    for fn, arg in calls.values():
        jax.block_until_ready(fn(arg))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, arg) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(arg))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(
    repeats: int = 3,
    problems=("P3", "P1", "supervisor-roi"),
    dtypes=("float32", "float64"),
    groups=tuple(GROUPS),
    roi: tuple[int, int, int, int] | None = None,
) -> dict:
    """{"rows": [{"name", "forward_s", "grad_s", "ratio"}, ...] one per problem, dtype and
    group, "by_problem": {problem/dtype: {"forward_s", "<group>_s", "<group>_ratio"}}};
    ``roi`` (fmin fmax smin smax) overrides every problem's region, for quick runs."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from run import _scratch

    from jaxdiff import build, simulate

    commands = _problems()
    out, rows = {}, []
    for problem in problems:
        args = commands[problem].split()
        if roi is not None:
            args += ["-roi", *map(str, roi)]
        setup = build(args, cwd=_scratch())
        for dtype in dtypes:
            cfg = dataclasses.replace(setup.config, dtype=dtype)
            exp = setup.experiment
            calls = {"forward": (jax.jit(lambda e, cfg=cfg: jnp.sum(simulate(e, cfg))), exp)}
            for group in groups:
                paths = GROUPS[group]
                if group == "cell" and not cfg.from_cell:
                    paths = (("crystal", "recip0"),)

                def loss(params, paths=paths, exp=exp, cfg=cfg):
                    e = exp
                    for path, value in zip(paths, params, strict=True):
                        e = _replace(e, path, value)
                    return jnp.sum(simulate(e, cfg))

                start = tuple(_get(exp, path) for path in paths)
                calls[group] = (jax.jit(jax.value_and_grad(loss)), start)
            times = _timed(calls, repeats)
            row = {"forward_s": times["forward"]}
            for group in groups:
                row[f"{group}_s"] = times[group]
                row[f"{group}_ratio"] = times[group] / times["forward"]
                rows.append(
                    dict(
                        name=f"{problem} {dtype} {group}",
                        forward_s=times["forward"],
                        grad_s=times[group],
                        ratio=times[group] / times["forward"],
                    )
                )
            out[f"{problem}/{dtype}"] = row
            print(json.dumps({f"{problem}/{dtype}": row}), flush=True)
    return {"rows": rows, "by_problem": out}


def _get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["P3", "P1", "supervisor-roi"])
    parser.add_argument("--dtype", nargs="*", default=["float32", "float64"])
    parser.add_argument("--groups", nargs="*", default=list(GROUPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--roi", nargs=4, type=int, metavar=("FMIN", "FMAX", "SMIN", "SMAX"))
    args = parser.parse_args()
    roi = tuple(args.roi) if args.roi else None
    measure(args.repeats, args.only, args.dtype, args.groups, roi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
