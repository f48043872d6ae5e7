"""Mixed precision against mixed precision: bayesq's variance-driven bit allocation beside HAWQ-V2's.

Reads a run directory of experiments.vnq (the float net, the fitted posterior, its pruning rule;
`experiments.runs.load_run`). Every method sees the same weights, the posterior means, and
quantizes them on the same row grids (`bayesq.row_grids`) under the same budget, counted the same
way (`bayesq.bits.average_bits`: everything a sparse file holds):

  * variance-driven: `bayesq.bits.allocate` (the posterior loss sum (q - theta)^2 / (2 sigma^2),
    greedy from the rule's widths), and the same greedy started from every row at 8 bits (the
    start HAWQ's greedy takes; so that the two differ only in the signal);
  * HAWQ-V2 per row: `bayesq.hawq.allocate_rows` (Omega = mean Hessian trace of the row x
    ||Q_b(w) - w||^2, the same greedy);
  * HAWQ-V2 per layer: `bayesq.hawq.allocate_layers` (one width per layer, exact Pareto choice);
  * even split: every row that keeps a weight at one width, the widest that fits the budget.

The Hessian traces are Hutchinson estimates (`bayesq.hessian`) of the cross-entropy of N training
images on the net whose weights are the posterior means, taken twice with independent draws: the
rank agreement of the two halves says how much of the row signal is noise; their pooled estimate
is the one used. Two regimes: "rule" (the posterior's log alpha pruning zeroes the same weights
for every method; widths then choose among the kept ones) and "none" (no weight is pruned: the
signals alone decide, rows may still go to 0 bits). Each allocation becomes a discrete net
(`quantize_posterior(widths=...)`, 8-bit activations), whose test accuracy is measured on the
kernels (checked equal to the integer reference), saved as an artifact (its bytes recorded).

Which signal ranks rows better is measured directly: the true cross-entropy increase of putting
one row alone on its grid of width b (the others left at their means), on M training images other
than the Hessian's (so that the Hessian is not judged on its own sample), against each signal at
b (Spearman's rho over all rows that keep a weight, pooled over layers as the greedy compares
them, and per layer); each net's loss on those images is recorded beside its test accuracy.
Writes into <run>/mixed_precision/:
  mixed_precision.json, accuracy_vs_bits_<regime>.png, artifacts/*.safetensors

  python -m experiments.mixed_precision --run results/vnq_mnist_lenet300 --data-dir ../shared/data/mnist
  python -m experiments.mixed_precision --run <run> --tiny      # a seconds-long smoke run
  python -m experiments.mixed_precision --run <run> --plot-only # redraw from the JSON

References: Dong et al., HAWQ-V2 (NeurIPS 2020); Hutchinson 1989; Achterhold et al., VNQ (ICLR 2018).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesq import bits, hawq
from bayesq.artifact import load_artifact, save_artifact
from bayesq.bit_rules import MAX_BITS, WIDTHS, BitRule, kept_mask, uniform_widths
from bayesq.cli import int_at_least, positive_float, run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_write_json
from bayesq.hessian import hutchinson_trace
from bayesq.ops import glue_module
from bayesq.plots import plot_accuracy_vs_bits
from bayesq.posterior import Posterior, PruningRule
from bayesq.quantize import quantize_posterior
from bayesq.row_grids import quantize_rows, row_losses
from bayesq.train import accuracy
from experiments.runs import load_run, read_json

NO_PRUNING = BitRule(pruning=PruningRule(log_alpha_threshold=1e30, zero_mass_threshold=1.0))
METHODS = ("variance-driven", "variance-driven from 8 bits", "HAWQ-V2 per row",
           "HAWQ-V2 per layer", "even split")  # fmt: skip
DEFAULTS = dict(budgets=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0], hessian_images=2048,
                truth_images=2048, max_samples=300, min_samples=100, truth_widths=[0, 2, 3],
                calibration=1024)  # fmt: skip
TINY = dict(budgets=[1.0, 2.0], hessian_images=128, truth_images=128, max_samples=20,
            min_samples=10, truth_widths=[0, 2], calibration=64)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default="results/vnq_digits_mlp", help="a run of experiments/vnq.py")
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--budgets", type=positive_float, nargs="+", default=None)
    p.add_argument("--regimes", nargs="+", choices=("rule", "none"), default=["rule", "none"])
    p.add_argument("--hessian-images", type=int_at_least(1), default=None, help="N")
    p.add_argument("--truth-images", type=int_at_least(1), default=None, help="the next ones")
    p.add_argument("--max-samples", type=int_at_least(1), default=None, help="per half")
    p.add_argument("--min-samples", type=int_at_least(1), default=None, help="per half")
    p.add_argument("--tol", type=positive_float, default=1e-3, help="PyHessian's stopping rule")
    p.add_argument("--truth-widths", type=int, nargs="+", default=None)
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--calibration", type=int_at_least(1), default=None)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--tiny", action="store_true", help="few budgets, images and draws")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from the JSON")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else DEFAULTS).items():
        if getattr(args, key) is None:  # only what was not given explicitly
            setattr(args, key, value)
    if any(b > MAX_BITS for b in args.budgets):
        raise ValueError(f"--budgets must lie in (0, {MAX_BITS}], got {args.budgets}")
    if any(w not in WIDTHS for w in args.truth_widths):
        raise ValueError(f"--truth-widths must be in {WIDTHS}, got {args.truth_widths}")
    if args.min_samples > args.max_samples:
        raise ValueError("--min-samples must not exceed --max-samples")
    return args


# --- the net of the posterior means, as a function of its weights --------------------------------
def _run_ops(posterior: Posterior, weights: dict, x: torch.Tensor, start: int = 0, record=None):
    """The posterior's ops from op `start` on x, with the layers' weights from `weights` (their
    biases from the posterior, in x's dtype); `record` (a dict) gets each layer's input and output."""
    for i, op in enumerate(posterior.ops[start:], start):
        if op["kind"] != "layer":
            x = glue_module(op)(x)
            continue
        layer = posterior.layers[op["name"]]
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        inp = x
        if layer.kind == "linear":
            x = F.linear(x, weights[op["name"]].to(x.dtype), bias)
        else:
            x = F.conv2d(x, weights[op["name"]].to(x.dtype), bias, **_conv(layer))
        if record is not None:
            record[i] = (inp, x)
    return x


def _conv(layer) -> dict:
    return dict(stride=tuple(layer.conv["stride"]), padding=tuple(layer.conv["padding"]))


def hessian_traces(posterior, x, y, args) -> dict:
    """Two independent Hutchinson estimates on the CE of (x, y), pooled, and their agreement."""
    names = list(posterior.layers)
    halves = []
    for half in range(2):
        params = [posterior.layers[n].mean.clone().requires_grad_() for n in names]
        loss = F.cross_entropy(_run_ops(posterior, dict(zip(names, params, strict=True)), x), y)
        generator = torch.Generator().manual_seed(2 * args.seed + half)
        halves.append(hutchinson_trace(loss, params, max_samples=args.max_samples,
                                       min_samples=args.min_samples, tol=args.tol,
                                       generator=generator))  # fmt: skip
    a, b = halves
    wa, wb = a.samples / (a.samples + b.samples), b.samples / (a.samples + b.samples)
    rows = {n: wa * a.row_traces[i] + wb * b.row_traces[i] for i, n in enumerate(names)}
    row_se = {
        n: (wa**2 * a.row_stderr[i] ** 2 + wb**2 * b.row_stderr[i] ** 2).sqrt()
        for i, n in enumerate(names)
    }
    traces = {n: float(wa * a.traces[i] + wb * b.traces[i]) for i, n in enumerate(names)}
    split = hawq.spearman(torch.cat(a.row_traces), torch.cat(b.row_traces))
    relative = torch.cat([row_se[n] / rows[n].abs().clamp(min=1e-300) for n in names])
    return {
        "rows": rows,
        "layers": traces,
        "summary": {
            "images": len(y),
            "samples": [a.samples, b.samples],
            "converged": [a.converged, b.converged],
            "tol": args.tol,
            "layer_traces": traces,
            "layer_stderr": {
                n: float(((wa * a.stderr[i]) ** 2 + (wb * b.stderr[i]) ** 2).sqrt())
                for i, n in enumerate(names)
            },  # fmt: skip
            "mean_traces": {n: traces[n] / posterior.layers[n].mean.numel() for n in names},
            "row_traces_split_half_spearman": split,
            "median_row_relative_stderr": float(relative.median()),
            "negative_row_estimates": int(sum(int((rows[n] < 0).sum()) for n in names)),
        },
    }


@torch.no_grad()
def true_row_losses(posterior, rule, x, y, widths) -> dict[str, torch.Tensor]:
    """Per layer, float64 (out, len(widths)): the cross-entropy increase on (x, y) when one row
    alone is put on its grid of each width (its others at the posterior means), float64.
    Only the changed output unit is recomputed in its layer, then the ops after it."""
    means = {n: lp.mean.double() for n, lp in posterior.layers.items()}
    record = {}
    base = F.cross_entropy(_run_ops(posterior, means, x.double(), record=record), y).item()
    out = {}
    for i, op in enumerate(posterior.ops):
        if op["kind"] != "layer":
            continue
        layer = posterior.layers[op["name"]]
        inp, z = record[i]
        rows = layer.mean.shape[0]
        table = torch.zeros(rows, len(widths), dtype=torch.float64)
        for j, width in enumerate(widths):
            grid = quantize_rows(layer, torch.full((rows,), width), rule)
            moved = (grid.codes.double() * grid.scale.double()[:, None]).reshape(layer.mean.shape)
            delta = moved - means[op["name"]]
            for r in range(rows):
                if layer.kind == "linear":
                    change = inp @ delta[r]
                else:
                    change = F.conv2d(inp, delta[r : r + 1], **_conv(layer))[:, 0]
                changed = z.clone()
                changed[:, r] += change
                logits = _run_ops(posterior, means, changed, start=i + 1)
                table[r, j] = F.cross_entropy(logits, y).item() - base
        out[op["name"]] = table
    return out


def rank_agreement(posterior, rule, var, omega, truth, truth_widths, halves) -> dict:
    """Spearman's rho over the rows that keep a weight: the two signals at each width, each
    signal against the true loss increase at the truth widths (pooled over layers and per
    layer), and the truth of one half of its images against the other's (its noise ceiling)."""
    keep = {n: kept_mask(lp, rule).any(1) for n, lp in posterior.layers.items()}

    def rho(a: dict, b: dict, col_a, col_b, names) -> float | None:
        x = torch.cat([a[n][keep[n], col_a] for n in names])
        y = torch.cat([b[n][keep[n], col_b] for n in names])
        value = hawq.spearman(x, y) if len(x) >= 2 else math.nan
        return None if math.isnan(value) else value

    names = list(posterior.layers)
    result = {
        "rows": int(sum(int(k.sum()) for k in keep.values())),
        "variance_vs_hessian": {str(w): rho(var, omega, w, w, names) for w in WIDTHS},
        "vs_true_loss": {},
    }
    for j, w in enumerate(truth_widths):
        entry = {}
        for label, signal in (("variance", var), ("hessian", omega)):
            entry[label] = rho(signal, truth, w, j, names)
            entry[f"{label}_per_layer"] = {n: rho(signal, truth, w, j, [n]) for n in names}
        entry["truth_split_half"] = rho(halves[0], halves[1], j, j, names)
        result["vs_true_loss"][str(w)] = entry
    return result


def allocations(posterior, rule, budget, hessian) -> dict:
    """Every method's row widths at `budget` (None where it has none that fits)."""
    top = {n: torch.full((lp.mean.shape[0],), MAX_BITS) for n, lp in posterior.layers.items()}
    evens = [
        w
        for w in WIDTHS[1:]
        if bits.average_bits(posterior, uniform_widths(posterior, w, rule), rule) <= budget
    ]
    return {
        METHODS[0]: bits.allocate(posterior, budget, rule),
        METHODS[1]: bits.allocate(posterior, budget, rule, start=top),
        METHODS[2]: hawq.allocate_rows(posterior, budget, hessian["rows"], rule),
        METHODS[3]: hawq.allocate_layers(posterior, budget, hessian["layers"], rule),
        METHODS[4]: uniform_widths(posterior, max(evens), rule) if evens else None,
    }


def measure(posterior, widths, rule, path: Path, data, args) -> dict:
    """Counted bits, artifact bytes, test accuracy on the kernels (checked against the integer
    reference and the reloaded artifact) and its loss on the truth images, of one allocation."""
    net = quantize_posterior(
        posterior, data["calibration"], widths=widths, act_bits=args.act_bits, rule=rule
    )
    save_artifact(net, path, data["image_shape"])
    loaded, _ = load_artifact(path)
    x_test, y_test = data["test"]
    probe = x_test[:500]
    logits = net(probe, threads=args.threads)
    weights = {}
    for name, layer in posterior.layers.items():
        grid = quantize_rows(layer, widths[name], rule)
        weights[name] = (grid.codes.float() * grid.scale[:, None]).reshape(layer.mean.shape)
    return {
        "average_bits": bits.average_bits(posterior, widths, rule),
        "codes_only_bits": bits.average_bits(posterior, widths, rule, count="codes"),
        "stored_bits": bits.average_bits(posterior, widths, rule, stored=True),
        "artifact_bytes": path.stat().st_size,
        "artifact_bits": 8 * path.stat().st_size / posterior.num_weights,
        "artifact_logits_equal": bool(torch.equal(loaded(probe, threads=args.threads), logits)),
        "kernels_equal_reference": bool(torch.equal(logits, net.reference(probe))),
        "accuracy": accuracy(lambda b: net(b, threads=args.threads), x_test, y_test),
        "truth_loss": F.cross_entropy(
            _run_ops(posterior, weights, data["truth"][0]), data["truth"][1]
        ).item(),
        "width_counts": {
            n: torch.bincount(w, minlength=MAX_BITS + 1).tolist() for n, w in widths.items()
        },  # fmt: skip
    }


def compare(posterior, rule, regime: str, hessian, data, args, out: Path) -> dict:
    """One regime: the signals' rank agreement, then every method at every budget."""
    x_t, y_t = data["truth"]
    var = {n: row_losses(lp, rule) for n, lp in posterior.layers.items()}
    omega = hawq.row_sensitivities(posterior, hessian["rows"], rule)
    # the truth on two halves of its images: their agreement is the most any signal can reach
    half = len(y_t) // 2
    halves = [true_row_losses(posterior, rule, x, y, args.truth_widths)
              for x, y in ((x_t[:half], y_t[:half]), (x_t[half:], y_t[half:]))]  # fmt: skip
    share = half / len(y_t)
    truth = {n: share * halves[0][n] + (1 - share) * halves[1][n] for n in posterior.layers}
    ranks = rank_agreement(posterior, rule, var, omega, truth, args.truth_widths, halves)
    ceiling = bits.average_bits(posterior, uniform_widths(posterior, MAX_BITS, rule), rule)
    against = {w: (e["variance"], e["hessian"]) for w, e in ranks["vs_true_loss"].items()}
    print(f"{regime}: every kept row at 8 bits costs {ceiling:.3f} bits per weight; rho "
          f"(variance, Hessian) against the true loss by width: {against}", flush=True)  # fmt: skip
    curve, notes = {m: [] for m in METHODS}, []
    for budget in sorted(b for b in args.budgets if b <= ceiling):  # above it: all the same net
        for method, widths in allocations(posterior, rule, budget, hessian).items():
            if widths is None or bits.average_bits(posterior, widths, rule) > budget:
                # no single width (even split) or width per layer (HAWQ's narrowest) fits
                notes.append(f"{method} at {budget:g} bits: no allocation fits the budget")
                continue
            slug = method.replace(" ", "_").replace("-", "")
            path = out / "artifacts" / f"{regime}_{slug}_{budget:g}.safetensors"
            point = {"budget": budget, **measure(posterior, widths, rule, path, data, args)}
            for key, table in (("omega", omega), ("posterior_loss", var)):
                point[key] = sum(float(table[n].gather(1, w[:, None]).sum())
                                 for n, w in widths.items())  # fmt: skip
            print(f"  {method} at {budget:g}: {point['average_bits']:.4f} bits per weight, "
                  f"{point['artifact_bytes']:,} bytes, accuracy {point['accuracy']:.4f}",
                  flush=True)  # fmt: skip
            curve[method].append(point)
    return {
        "log_alpha_threshold": rule.pruning.log_alpha_threshold if regime == "rule" else None,
        "all_rows_at_8_bits": ceiling,
        "rank_agreement": ranks,
        "curve": curve,
        "notes": notes,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    out = run / "mixed_precision"
    if args.plot_only:
        return plot_from_saved(out)
    float_net, posterior, pruning, report = load_run(run)
    split = load_dataset(args.data_dir or "digits")
    n, m = args.hessian_images, args.truth_images
    if n + m > len(split.y_train):
        raise ValueError(f"--hessian-images + --truth-images exceed the {len(split.y_train)} "
                         "training images")  # fmt: skip
    data = {
        "test": (split.x_test.float(), split.y_test),
        "calibration": split.x_train[: args.calibration].float(),
        "hessian": (split.x_train[:n].float(), split.y_train[:n]),
        "truth": (split.x_train[n : n + m].float(), split.y_train[n : n + m]),
        "image_shape": split.image_shape,
    }
    means = {name: lp.mean for name, lp in posterior.layers.items()}
    acc_float = accuracy(float_net, *data["test"])
    acc_mean = accuracy(lambda b: _run_ops(posterior, means, b), *data["test"])
    t0 = time.perf_counter()
    hessian = hessian_traces(posterior, *data["hessian"], args)
    s = hessian["summary"]
    s["seconds"] = time.perf_counter() - t0
    traces = {name: round(v, 4) for name, v in s["layer_traces"].items()}
    print(f"{report['arch']}: float {acc_float:.4f}, posterior means {acc_mean:.4f}; Hessian "
          f"on {s['images']} images, {s['samples']} draws ({s['seconds']:.0f} s): layer traces "
          f"{traces}, row split-half rho {s['row_traces_split_half_spearman']:.3f}", flush=True)  # fmt: skip
    regimes = {}
    for regime in args.regimes:
        rule = BitRule(pruning=pruning) if regime == "rule" else NO_PRUNING
        regimes[regime] = compare(posterior, rule, regime, hessian, data, args, out)
    summary = {
        "run": str(run), "arch": report["arch"], "data": report["data"],
        "weights": posterior.num_weights, "accuracy_float": acc_float,
        "accuracy_posterior_means": acc_mean, "act_bits": args.act_bits,
        "hessian": s, "truth_images": m, "truth_widths": args.truth_widths, "regimes": regimes,
    }  # fmt: skip
    atomic_write_json(out / "mixed_precision.json", summary)
    plot_from_saved(out)
    return summary


def plot_from_saved(out: Path) -> dict:
    """accuracy_vs_bits_<regime>.png from mixed_precision.json: one line per method."""
    path = Path(out) / "mixed_precision.json"
    summary = read_json(path)
    try:
        for regime, entry in summary["regimes"].items():
            curves = {
                method: [(float(p["average_bits"]), float(p["accuracy"])) for p in points]
                for method, points in entry["curve"].items()
                if points
            }
            title = (f"{summary['arch']} on {summary['data']}, "
                     f"{'log alpha pruning' if regime == 'rule' else 'no weight pruning'}")  # fmt: skip
            plot_accuracy_vs_bits(curves, float(summary["accuracy_posterior_means"]),
                                  Path(out) / f"accuracy_vs_bits_{regime}.png", title)  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a mixed_precision.json of this script ({err})") from err
    return json.loads(json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
