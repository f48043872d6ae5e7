"""EBP-D and EBP-P (binary and ternary weights) against BinaryConnect and the float net.

For every architecture (hidden widths) and seed, trains on the training part and records the test
accuracy after every epoch (learning curves); the table reports the last epoch, never a best epoch.

  EBP binary / ternary / real  bayesq.ebp.EBPNet, sign units, mini-batch 10, no learning rate;
                               one run gives both EBP-P (output means) and EBP-D (sign net on the
                               most probable weight levels; real: on the mean weights); inputs
                               centred by default (--inputs): each pixel minus its mean over the
                               training images
  BinaryConnect                Courbariaux et al. (2015): the same widths, weights binarized to
                               +-1 by sign in the forward pass (straight-through gradient), a float
                               buffer clipped to [-1, 1] after each Adam step, real biases, batch
                               norm after each layer, ReLU; cross-entropy (the paper used squared
                               hinge), Adam with a learning rate decaying linearly to 0
  float                        the same widths, ReLU, cross-entropy, Adam (same schedule)

Why centred inputs for EBP: raw intensities in [0, 1] are all >= 0 and a weight of +-1 cannot
ignore an inked pixel, so every first-layer pre-activation carries a large common-mode part
sum_j Wbar_j E[x_j] that the unit's bias has to offset. With x_j - E[x_j] (the mean over the
training part only) that part is gone and the units see how an image differs from the average
one. On the MNIST subset (784-500-10, 20 epochs, seeds 0-2) binary EBP-P ends at 97.16% centred
against 96.93% raw (--inputs raw). BinaryConnect and the float net (batch norm, Adam) keep the
raw inputs.

Writes under --out (default results/ebp/<data>/, <data>_raw/ with --inputs raw, <...>_validation/
with --validation N): results.json (config and every run with its curve and settings; a rerun
skips the runs already there with the same architecture, method, seed, epochs, batch size and EBP
settings, so an interrupted job resumes; ternary runs of the magnitude update before issue 12 are
not reused and get their own table rows), table.md (the markdown table, also printed) and
curves_<arch>.png (test accuracy per epoch, mean over seeds with the min-max band). Every file is
written atomically (bayesq.files). --validation N holds out N training examples and reports on
them instead of the test set, for choosing settings.

  python -m experiments.ebp                                            # digits, 64-100-10
  # the README's MNIST table (24,000 training images, full test set):
  python -m experiments.ebp --data-dir ../shared/data/mnist --archs 500 --families binary \\
      --seeds 0 1 2 --threads 1
  python -m experiments.ebp --data-dir ../shared/data/mnist --archs 500 --families ternary \\
      --baselines --seeds 0 1 --threads 1
  python -m experiments.ebp --data-dir ../shared/data/mnist --archs 500x500 --families binary \\
      --seeds 0 --threads 1
  python -m experiments.ebp --tiny                                     # seconds
  python -m experiments.ebp --data-dir ../shared/data/mnist --archs 500 --families ternary \\
      --baselines --seeds 0 --threads 1 --validation 4000 [--no-magnitude-update]
  python -m experiments.ebp --plot-only --out results/ebp/mnist         # redraw from results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import models
from bayesq.binary_connect import fit_baseline
from bayesq.cli import finite_float, int_at_least, positive_float, run_main
from bayesq.data import Split, load_dataset
from bayesq.ebp import FAMILIES, EBPNet
from bayesq.files import atomic_write_json, atomic_write_text
from bayesq.plots import plot_accuracy_curves
from bayesq.train import accuracy

METHOD_ORDER = ["EBP-P", "EBP-D", "BinaryConnect", "float"]
# Recorded in every ternary run's settings and part of the key a rerun matches on: runs saved by
# an earlier magnitude update (without the mean's second-order term) are not reused.
TERNARY_UPDATE = "adf-second-order"
TINY = {"archs": ["16"], "seeds": [0], "epochs": 2}  # --tiny's defaults; explicit flags win
_COLORS = {"binary": "C0", "ternary": "C1", "real": "C2", "BinaryConnect": "C3", "float": "C7"}


# ------------------------------------------------------------------------------ baselines
def train_baseline(data, sizes, binary, seed, epochs, batch_size, lr) -> list[float]:
    """BinaryConnect (binary=True) or the float MLP of the same widths, trained by
    `bayesq.binary_connect.fit_baseline`; the test accuracy after every epoch."""
    torch.manual_seed(seed)  # the net's initial weights
    hidden = tuple(sizes[1:-1])
    build = models.binary_connect_mlp if binary else models.mlp
    net = build(sizes[0], hidden, sizes[-1])
    curve = []

    def record(epoch: int, n: nn.Module) -> None:
        curve.append(accuracy(n, data.x_test, data.y_test, batch_size=4096))

    fit_baseline(net, data.x_train, data.y_train, epochs, batch_size, lr, seed, on_epoch=record)
    return curve


def centered(data: Split) -> Split:
    """The split with every input feature minus its mean over the training part, (N, features)."""
    mean = data.x_train.mean(0)
    return Split(
        data.name,
        data.x_train - mean,
        data.y_train,
        data.x_test - mean,
        data.y_test,
        data.num_classes,
    )


def validation_split(data: Split, size: int, seed: int = 0) -> Split:
    """The training part split in two: ``size`` held-out training examples become the test part.

    For choosing settings without looking at the test set. The held-out rows are drawn with a
    generator seeded by ``seed``; the rest, in their original order, is the training part.
    """
    if not 0 < size < len(data.y_train):
        raise ValueError(
            f"--validation must lie in 1..{len(data.y_train) - 1} (the training part has "
            f"{len(data.y_train)} examples), got {size}"
        )
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:size], order[size:].sort().values
    return Split(
        f"{data.name}-validation",
        data.x_train[kept],
        data.y_train[kept],
        data.x_train[held],
        data.y_train[held],
        data.num_classes,
    )


def train_ebp(data, sizes, family, seed, epochs, batch_size, ebp_options) -> tuple[dict, dict]:
    """EBP; the EBP-P and EBP-D test accuracies after every epoch, and extra facts of the net."""
    net = EBPNet(sizes, family, seed=seed, **ebp_options.get(family, {}))
    curves = {"EBP-P": [], "EBP-D": []}

    def record(epoch: int, n: EBPNet) -> None:
        curves["EBP-P"].append(n.accuracy(data.x_test, data.y_test, "probabilistic"))
        curves["EBP-D"].append(n.accuracy(data.x_test, data.y_test, "deterministic"))

    net.fit(data.x_train, data.y_train, epochs, batch_size, callback=record)
    extra = {}
    if family == "ternary":
        codes = torch.cat([c.flatten() for c in net.discrete_weights()])
        extra["zero_share"] = float((codes == 0).float().mean())
    return curves, extra


# ------------------------------------------------------------------------------ reporting
def arch_name(sizes) -> str:
    return "-".join(str(s) for s in sizes)


def run_label(run: dict) -> str:
    """The table row a run belongs to: method, weight family and any non-default EBP setting."""
    if not run["method"].startswith("EBP"):
        return run["method"]
    label = f"{run['method']} {run['family']}"
    settings = run.get("settings", {})
    if run["family"] == "ternary":
        notes = []
        if not settings.get("magnitude_update", True):
            notes.append("no magnitude update")
        elif settings.get("ternary_update") != TERNARY_UPDATE:
            notes.append("first-order magnitude update of before issue 12")
        if settings.get("zero_logit", 0.0):
            notes.append(f"zero_logit {settings['zero_logit']:g}")
        label += "".join(f", {note}" for note in notes)
    return label


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (architecture, method label): final accuracy over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["arch"], run_label(run)), []).append(run)

    def order(key):  # architectures by depth; EBP by family (P before D), then the baselines
        arch, label = key
        first = groups[key][0]
        family = first.get("family")
        fam_rank = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
        return (arch.count("-"), arch, fam_rank, METHOD_ORDER.index(label.split(" ")[0]), label)

    rows = []
    for key in sorted(groups, key=order):
        group = sorted(groups[key], key=lambda r: r["seed"])
        finals = [r["final_accuracy"] for r in group]
        rows.append(
            {
                "arch": key[0],
                "method": key[1],
                "seeds": [r["seed"] for r in group],
                "epochs": group[0]["epochs"],
                "final": finals,
                "mean": statistics.fmean(finals),
                "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "zero_share": (
                    statistics.fmean(r["zero_share"] for r in group)
                    if "zero_share" in group[0]
                    else None
                ),
            }
        )
    return rows


def markdown_table(rows: list[dict], data_name: str) -> str:
    lines = [
        "| data | architecture | method | epochs | seeds | test accuracy (mean +- sd) | per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        per_seed = ", ".join(f"{100 * a:.2f}" for a in r["final"])
        method = r["method"]
        if r["zero_share"] is not None:
            method += f" ({100 * r['zero_share']:.0f}% zeros)"
        lines.append(
            f"| {data_name} | {r['arch']} | {method} | {r['epochs']} | "
            f"{','.join(map(str, r['seeds']))} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
            f"{per_seed} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict], out: Path, data_name: str) -> list[Path]:
    """One PNG per architecture: test accuracy against epoch, mean over seeds, min-max band."""
    paths = []
    for arch in sorted({r["arch"] for r in runs}):
        curves, styles = {}, {}
        for label in [row["method"] for row in summarize(runs) if row["arch"] == arch]:
            curves[label] = [
                r["curve"] for r in runs if r["arch"] == arch and run_label(r) == label
            ]
            method, _, rest = label.partition(" ")
            # one colour per weight family (P solid, D dashed), then one per baseline
            color = _COLORS.get(rest.split(",")[0] or method, "C9")
            styles[label] = (color, "--" if method == "EBP-D" else "-")
        path = out / f"curves_{arch}.png"
        paths.append(plot_accuracy_curves(curves, path, f"{data_name}, MLP {arch}", styles))
    return paths


def report(runs, out: Path, data_name: str, config: dict) -> dict:
    rows = summarize(runs)
    table = markdown_table(rows, data_name)
    atomic_write_text(out / "table.md", table + "\n")
    plots = plot_curves(runs, out, data_name) if runs else []
    print(table)
    for p in plots:
        print(f"wrote {p}")
    return {"config": config, "table": rows, "plots": [str(p) for p in plots]}


# ------------------------------------------------------------------------------ main
_positive_int = int_at_least(1)
_seed = int_at_least(0)


def _arch(text: str) -> str:
    """Hidden widths joined by x ("500", "500x500"), each a positive integer."""
    parts = text.split("x")
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected hidden widths joined by x, e.g. 500 or 500x500, got {text!r}"
        )
    return "x".join(str(int(p)) for p in parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument(
        "--archs",
        nargs="+",
        type=_arch,
        default=None,
        help="hidden widths per architecture, e.g. 500 500x500 (default: digits 100, MNIST 500)",
    )
    p.add_argument("--families", nargs="*", choices=FAMILIES, default=["binary", "ternary"])
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=["BinaryConnect", "float"],
        default=["BinaryConnect", "float"],
    )
    p.add_argument("--seeds", type=_seed, nargs="+", default=None, help="default: 0 1 2")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default: 20")
    p.add_argument(
        "--batch-size", type=_positive_int, default=10, help="EBP mini-batch (the paper's 10)"
    )
    p.add_argument(
        "--baseline-batch-size",
        type=_positive_int,
        default=None,
        help="mini-batch of BinaryConnect and the float net (default: digits 10, MNIST 100)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=1e-3, help="Adam learning rate of the baselines"
    )
    p.add_argument(
        "--inputs",
        choices=["centered", "raw"],
        default="centered",
        help="EBP inputs: minus the training mean of each feature (default), or raw in [0, 1]",
    )
    p.add_argument(
        "--zero-logit", type=finite_float, default=0.0, help="ternary EBP prior (see EBPNet)"
    )
    p.add_argument(
        "--no-magnitude-update",
        action="store_true",
        help="ternary EBP: keep a at its prior (the paper's first-order rule only)",
    )
    p.add_argument(
        "--validation",
        type=_positive_int,
        default=None,
        metavar="N",
        help="hold out N training examples and report on them instead of the test set "
        "(for choosing settings; writes under <out>_validation)",
    )
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads (default: torch's)"
    )
    p.add_argument("--out", default=None)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a smoke run: a slice of the data and, unless given, --archs 16 --seeds 0 --epochs 2",
    )
    p.add_argument("--plot-only", action="store_true", help="redraw table and curves from --out")
    return p.parse_args(argv)


_RUN_FIELDS = {
    "arch": str,
    "method": str,
    "seed": int,
    "epochs": int,
    "curve": list,
    "final_accuracy": (int, float),
    "settings": dict,
}


def load_results(path: Path) -> dict:
    """results.json as {"config": ..., "runs": [...]}, or {"runs": []} if it does not exist.

    Raises ValueError naming the file if it is not JSON or not a results file of this script.
    """
    if not path.exists():
        return {"runs": []}
    try:
        saved = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON results file ({err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("runs"), list):
        raise ValueError(f'{path}: expected a JSON object with a "runs" list')
    if "config" in saved and not isinstance(saved["config"], dict):
        raise ValueError(f'{path}: "config" must be a JSON object')
    for index, run in enumerate(saved["runs"]):
        bad = [
            name
            for name, kind in _RUN_FIELDS.items()
            if not isinstance(run, dict) or not isinstance(run.get(name), kind)
        ]
        if not bad and (
            not run["curve"]
            or not all(isinstance(a, int | float) and 0 <= a <= 1 for a in run["curve"])
            or run.get("family") not in (*FAMILIES, None)
        ):
            bad = ["curve or family"]
        if bad:
            raise ValueError(f"{path}: run {index} has a missing or malformed {', '.join(bad)}")
    return saved


def _run_key(run_or_fields: dict) -> tuple:
    """What makes two runs the same experiment: a rerun skips a run whose key is saved."""
    r = run_or_fields
    settings = r["settings"]
    ebp = r["method"].startswith("EBP")
    return (
        r["arch"],
        r["method"],
        r.get("family"),
        r["seed"],
        r["epochs"],
        # runs saved before --inputs existed were trained on raw inputs
        settings.get("inputs", "raw") if ebp else None,
        settings.get("batch_size"),
        settings.get("zero_logit") if ebp else None,
        settings.get("magnitude_update") if ebp else None,
        settings.get("ternary_update") if ebp else None,
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_name = "digits" if args.data_dir is None else "mnist"
    suffix = ("_raw" if args.inputs == "raw" else "") + ("_tiny" if args.tiny else "")
    suffix += "_validation" if args.validation else ""
    out = Path(args.out or f"results/ebp/{data_name}{suffix}")
    results_path = out / "results.json"
    saved = load_results(results_path)
    if args.plot_only and "config" in saved:  # the data set the saved runs were trained on
        data_name = saved["config"].get("data", data_name)
    runs = saved["runs"]
    # --tiny supplies defaults only: a flag given on the command line is never overridden
    defaults = TINY if args.tiny else {"archs": None, "seeds": [0, 1, 2], "epochs": 20}
    archs = args.archs or defaults["archs"] or (["100"] if data_name == "digits" else ["500"])
    seeds = args.seeds if args.seeds is not None else defaults["seeds"]
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    # digits has 1,347 training images: at 100 per batch, 20 epochs are too few Adam steps
    baseline_batch = args.baseline_batch_size or (10 if data_name == "digits" else 100)
    config = {k: v for k, v in vars(args).items() if k not in ("plot_only",)}
    config.update(
        archs=archs, seeds=seeds, epochs=epochs, data=data_name, baseline_batch_size=baseline_batch
    )
    if args.plot_only:
        out.mkdir(parents=True, exist_ok=True)
        return report(runs, out, data_name, config)

    data = load_dataset(args.data_dir or "digits").flat()
    if args.tiny:
        data = data.subset(300, 200, seed=0)
    if args.validation:
        data = validation_split(data, args.validation)
    ebp_data = centered(data) if args.inputs == "centered" else data
    ebp_options = {
        "ternary": {"zero_logit": args.zero_logit, "magnitude_update": not args.no_magnitude_update}
    }

    def ebp_settings(family):
        settings = {"batch_size": args.batch_size, "inputs": args.inputs}
        settings.update(ebp_options.get(family, {}))
        if family == "ternary" and not args.no_magnitude_update:
            settings["ternary_update"] = TERNARY_UPDATE
        return settings

    baseline_settings = {"batch_size": baseline_batch, "lr": args.lr, "optimizer": "Adam"}
    done = {_run_key(r) for r in runs}

    def save() -> None:
        atomic_write_json(results_path, {"config": config, "runs": runs}, indent=1)

    for hidden in archs:
        sizes = [data.x_train.shape[1], *(int(w) for w in hidden.split("x")), data.num_classes]
        arch = arch_name(sizes)
        jobs = [("EBP", fam) for fam in args.families] + [(b, None) for b in args.baselines]
        for seed in seeds:
            for method, family in jobs:
                settings = ebp_settings(family) if method == "EBP" else baseline_settings
                key_method = "EBP-P" if method == "EBP" else method
                fields = dict(
                    arch=arch,
                    method=key_method,
                    family=family,
                    seed=seed,
                    epochs=epochs,
                    settings=settings,
                )
                if _run_key(fields) in done:
                    continue
                t0 = time.perf_counter()
                if method == "EBP":
                    curves, extra = train_ebp(
                        ebp_data, sizes, family, seed, epochs, args.batch_size, ebp_options
                    )
                else:
                    extra = {}
                    curves = {
                        method: train_baseline(
                            data,
                            sizes,
                            method == "BinaryConnect",
                            seed,
                            epochs,
                            baseline_batch,
                            args.lr,
                        )
                    }
                seconds = time.perf_counter() - t0
                for name, curve in curves.items():
                    run = {
                        "arch": arch,
                        "method": name,
                        "family": family,
                        "seed": seed,
                        "epochs": epochs,
                        "curve": curve,
                        "final_accuracy": curve[-1],
                        "train_seconds": seconds,
                        "settings": dict(settings),
                        "threads": torch.get_num_threads(),
                        **extra,
                    }
                    runs.append(run)
                    print(
                        f"{arch} {run_label(run):18s} seed {seed}: {100 * curve[-1]:.2f}% "
                        f"after {epochs} epochs ({seconds:.0f} s)",
                        flush=True,
                    )
                save()
    return report(runs, out, data_name, config)


if __name__ == "__main__":
    run_main(main)
