"""Li et al. (NeurIPS 2017) on our own problems: measured suboptimality of float SGD, deterministic
rounding, stochastic rounding and BinaryConnect against the convex bounds, and the Markov-chain
view of stochastic rounding over learning rates 1 .. 0.0001.

Writes under --out (default results/li_bounds/):
  bounds.json           every sweep: constants (d, mu, G, D, L2), per method mean / SE / bound
  markov.json           exact SR stationary distributions, mixing times, float/BC histograms
  summary.json          the key numbers (SR floor slope, BC final suboptimality, TV, t_mix, ...)
  li_bounds_sr_bc.png   suboptimality against T and against Delta, with the bounds (log-log)
  li_bounds_check.png   every sweep point: measured mean + 2 SE against its bound
  li_markov.png         the learning-rate histograms (1-D), mixing time, concentration
  li_markov_2d.png      SR stationary distribution and float SGD on the 2-D problem
and copies the PNGs into --docs (default docs/; none for --tiny).

Examples:
  python -m experiments.li_bounds              # the full run, a few minutes on one core
  python -m experiments.li_bounds --tiny       # a seconds-long smoke run
  python -m experiments.li_bounds --plot-only  # redraw the figures from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bayesq.analysis import experiments as ex
from bayesq.analysis import figures
from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_path, atomic_write_json

FULL = dict(
    deltas=[1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4],
    checkpoints=[10, 30, 100, 300, 1000, 3000, 10000, 30000],
    replicates=16,
    markov=dict(),
)
TINY = dict(
    deltas=[1 / 16, 1 / 4],
    checkpoints=[10, 100, 300],
    replicates=4,
    markov=dict(hist_chains=200, max_steps=2000, tv_lrs=(1.0,), tv_chains=1000, tv_chains_2d=2000),
)
FIGURES = ("li_bounds_sr_bc.png", "li_bounds_check.png", "li_markov.png", "li_markov_2d.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="results/li_bounds", help="output directory")
    p.add_argument(
        "--docs", default=None, help="copy the PNGs here (default docs/, none if --tiny)"
    )
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--plot-only", action="store_true", help="redraw from the saved JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p.parse_args(argv)


def digits_problem(lam: float, box: float) -> ex.LogisticProblem:
    """Binary logistic regression on the embedded digits: is the digit >= 5? 64 pixels + bias."""
    data = load_dataset("digits").flat()
    x = data.x_train.double().numpy()
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    y = (data.y_train.numpy() >= 5).astype(np.float64)
    return ex.LogisticProblem(x, y, lam=lam, box=box, batch_size=1, name="logistic (digits >= 5)")


def run_bounds(cfg: dict, seed: int) -> list[dict]:
    quad = ex.QuadraticProblem.make(d=10, mu=1.0, L=4.0, noise_std=1.0, box=1.0, seed=seed)
    # the convex schedule c / sqrt(t + 1) with the c that minimizes its SGD term, D / (G sqrt 2)
    c = 2 * quad.box * np.sqrt(quad.d) / (quad.G * np.sqrt(2))
    problems = [
        (quad, "strongly_convex", None),
        (quad, "convex", float(c)),
        (ex.LogisticProblem.synthetic(n=500, d=10, lam=0.1, box=1.0, seed=seed), "strongly_convex", None),
        (digits_problem(lam=0.1, box=1.0), "strongly_convex", None),
    ]  # fmt: skip
    sweeps = []
    for problem, schedule, cc in problems:
        t0 = time.time()
        sweeps.append(
            ex.sweep(
                problem,
                cfg["deltas"],
                cfg["checkpoints"],
                cfg["replicates"],
                schedule=schedule,
                c=cc,
                seed=seed,
            )  # fmt: skip
        )
        print(f"  {problem.name} ({schedule}): {time.time() - t0:.1f} s", flush=True)
    return sweeps


def summarize(sweeps: list[dict], markov: dict) -> dict:
    out = {"all_below": True, "sweeps": []}
    for s in sweeps:
        m = s["methods"]
        floors = np.asarray(m["sr"]["mean"])[:, -1]
        entry = {
            "problem": s["problem"],
            "schedule": s["schedule"],
            "T": s["checkpoints"][-1],
            "below": {k: v["below"] for k, v in m.items() if "below" in v},
            "bc_below_published": m["bc"]["below_published"],
            "sr_final": dict(zip(map(str, s["deltas"]), floors.tolist(), strict=True)),
            "sr_floor_slope": ex.floor_slope(s["deltas"], floors) if len(floors) > 1 else None,
            "bc_final": np.asarray(m["bc"]["mean"])[:, -1].tolist(),
            "float_final": np.asarray(m["float"]["mean"])[:, -1].tolist(),
            "det_final": np.asarray(m["det"]["mean"])[:, -1].tolist(),
            "det_freeze_step": m["det"]["freeze_step"],
            "max_ratio_to_bound": max(
                float(np.max((np.asarray(v["mean"]) + 2 * np.asarray(v["se"])) / v["bound"]))
                for v in m.values()
                if "bound" in v
            ),
        }
        out["all_below"] &= all(entry["below"].values())
        out["sweeps"].append(entry)
    for key in ("1d", "2d"):
        mk = markov[key]
        out[f"markov_{key}"] = {
            "lrs": mk["lrs"],
            "mixing_time": mk["mixing_time"],
            "sr_distance": mk["sr_distance"],
            "float_distance": mk["float_distance"],
            "bc_distance": mk.get("bc_distance"),
            "sr_simulated_tv": mk["sr_simulated_tv"],
        }
    return out


def plot(out: Path, sweeps: list[dict], markov: dict) -> list[Path]:
    """Draw the figures into `out` (each written atomically by bayesq.analysis.figures, so an
    interrupted run never leaves a truncated PNG)."""
    drawers = [figures.plot_bounds, figures.plot_bound_check, figures.plot_markov]
    drawers.append(figures.plot_markov_2d)
    inputs = [sweeps, sweeps, markov, markov]
    return [
        draw(data, out / name) for draw, data, name in zip(drawers, inputs, FIGURES, strict=True)
    ]


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _read_json(path: Path):
    """A saved result; ValueError naming the file if it is missing or malformed."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file (run without --plot-only first)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TINY if args.tiny else FULL
    t0 = time.time()
    if args.plot_only:
        sweeps = _read_json(out / "bounds.json")
        markov = _read_json(out / "markov.json")
        try:
            summary = summarize(sweeps, markov)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(
                f"{out}/bounds.json or markov.json: not results of this script ({err!r})"
            ) from err
    else:
        print("bound sweeps", flush=True)
        sweeps = run_bounds(cfg, args.seed)
        atomic_write_json(out / "bounds.json", sweeps, indent=None)
        print("Markov chains", flush=True)
        markov = ex.markov_study(seed=args.seed, **cfg["markov"])
        atomic_write_json(out / "markov.json", markov, indent=None)
        summary = summarize(sweeps, markov)
    summary["tiny"], summary["seconds"] = args.tiny, round(time.time() - t0, 1)
    if args.plot_only and (out / "summary.json").exists():  # keep what the run itself recorded
        before = _read_json(out / "summary.json")
        if isinstance(before, dict) and {"tiny", "seconds"} <= before.keys():
            summary["tiny"], summary["seconds"] = before["tiny"], before["seconds"]
    atomic_write_json(out / "summary.json", summary, indent=1)
    paths = plot(out, sweeps, markov)
    docs = args.docs if args.docs is not None else (None if args.tiny else "docs")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        for p in paths:
            _copy_atomic(p, Path(docs) / p.name)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    run_main(main)
