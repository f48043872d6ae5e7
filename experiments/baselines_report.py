"""The baselines' table and figures, read from the runs `experiments.baselines` saved.

For each architecture: one row per method, accuracy as mean +- standard deviation over the seeds
that finished (and how many), the kernels' accuracy and whether their logits equal the integer
reference's, sparsity, honest bytes, bits per weight, BOPs, the batch-256 latency against torch,
and the method's published figure (`experiments/baselines_published.json`) beside ours. Written
as ``table_<data>.md``, ``summary_<data>.json`` and ``<data>_<arch>_bytes.png`` /
``<data>_<arch>_bops.png`` (accuracy against model bytes and against BOPs, one point a method).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bayesq.files import atomic_write_json
from bayesq.plots import plot_accuracy_against

PUBLISHED = Path(__file__).with_name("baselines_published.json")


def _published() -> dict[str, list[dict]]:
    if not PUBLISHED.exists():
        return {}
    entries = json.loads(PUBLISHED.read_text())
    found: dict[str, list[dict]] = {}
    for entry in entries:
        found.setdefault(entry["method"], []).append(entry)
    return found


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    """One method's row from its runs (one per seed)."""
    first = runs[0]
    acc, acc_sd = _mean_std([r.get("accuracy") for r in runs])
    kacc, kacc_sd = _mean_std([(r.get("kernels") or {}).get("accuracy") for r in runs])
    row = {
        "method": first["method"], "label": first["label"], "paper": first["paper"],
        "bits": first["bits"], "seeds": len(runs), "epochs": first.get("epochs"),
        "accuracy": acc, "accuracy_sd": acc_sd,
        "kernels_accuracy": kacc, "kernels_accuracy_sd": kacc_sd,
        "kernels_equal_reference": all((r.get("kernels") or {}).get("equal_reference", True)
                                       for r in runs) if first.get("kernels") else None,
        "kernels_why_not": first.get("kernels_why_not"),
        "weight_widths": (first.get("kernels") or {}).get("weight_widths"),
        "act_bits": (first.get("kernels") or {}).get("act_bits"),
        "zero_share": _mean_std([r.get("zero_share") for r in runs])[0],
        "bytes": _mean_std([r.get("bytes") for r in runs])[0],
        "bytes_counted": first.get("bytes_counted"),
        "bits_per_weight": _mean_std([r.get("bits_per_weight") for r in runs])[0],
        "bops": _mean_std([r.get("bops_sparse") or r.get("bops_nominal") for r in runs])[0],
        "train_seconds": _mean_std([r.get("train_seconds") for r in runs])[0],
        "latency_b256": next((r["latency_b256"] for r in runs if r.get("latency_b256")), None),
        "notes": first.get("notes", ""),
    }  # fmt: skip
    return row


def _pct(v, sd=None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" + (f" +- {100 * sd:.2f}" if sd else "")


def _published_cell(p: dict) -> str:
    """A paper's figure: data, architecture, setting, metric, ours-to-compare value (float)."""
    cell = f"{p['dataset']} {p['architecture']} {p['setting']}: {p['metric']} {p['value']}"
    if p.get("float_value") is not None:
        cell += f" (float {p['float_value']})"
    return cell + ("" if p.get("verified") else " [not verified against the paper's text]")


def markdown(rows: list[dict], data: str, arch: str, published: dict) -> str:
    lines = [
        f"### {data}, {arch}",
        "",
        "| method | W/A/G bits | accuracy % (seeds) | kernels % | kernels = reference | zeros | "
        "bytes | bits/weight | BOPs | batch 256 ms (x float32, x best int8) | published |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lat = r["latency_b256"]
        timing = (f"{lat['ms']['bayesq']:.3f} ({lat['vs_float32']:.2f}x, "
                  f"{lat['vs_best_int8']:.2f}x)" if lat else "-")  # fmt: skip
        if r["kernels_accuracy"] is not None:
            kernels = _pct(r["kernels_accuracy"], r["kernels_accuracy_sd"])
            equal = "yes" if r["kernels_equal_reference"] else "NO"
        else:
            kernels, equal = (
                "-",
                f"not run: {r['kernels_why_not']}" if r["kernels_why_not"] else "-",
            )
        pub = "; ".join(_published_cell(p) for p in published.get(r["method"], [])[:2]) or "-"
        bpw = "-" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.2f}"
        nbytes = "-" if r["bytes"] is None else f"{r['bytes']:,.0f}"
        bops = "-" if r["bops"] is None else f"{r['bops']:.3g}"
        bits = "/".join(map(str, r["bits"]))
        lines.append(
            f"| {r['label']} | {bits} | {_pct(r['accuracy'], r['accuracy_sd'])} ({r['seeds']}) | "
            f"{kernels} | {equal} | {_pct(r['zero_share'])} | {nbytes} | {bpw} | {bops} | "
            f"{timing} | {pub} |"
        )
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict], key: str, xlabel: str, path: Path, title: str) -> Path | None:
    """Accuracy (on the kernels where they ran, else the method's own net) against `key`."""
    points = [
        (
            r[key],
            r["kernels_accuracy"] or r["accuracy"],
            r["label"],
            r["kernels_accuracy"] is not None,
        )
        for r in rows
        if r.get(key) and (r["kernels_accuracy"] or r["accuracy"])
    ]
    return plot_accuracy_against(points, xlabel, path, title) if points else None


# One bit width lowered at a time, from DoReFa's W1/A2/G32 (and W2 for the weights): the
# accuracy each component's precision holds (Zhou et al. 2016, Sec. 5: "gradients need the most
# bits, then activations, then weights"; their SVHN table: G32 -> G2 loses 6.7 points, A2 -> A1
# 0.5, W2 -> W1 about 0).
DOREFA_STEPS = {
    "weights 2 -> 1 bit (A2, G32)": ("dorefa_2_2_32", "dorefa_1_2_32"),
    "activations 2 -> 1 bit (W1, G32)": ("dorefa_1_2_32", "dorefa_1_1_32"),
    "gradients 32 -> 4 bits (W1, A2)": ("dorefa_1_2_32", "dorefa_1_2_4"),
    "gradients 32 -> 2 bits (W1, A2)": ("dorefa_1_2_32", "dorefa_1_2_2"),
}


def dorefa_claim(rows: list[dict]) -> dict[str, float]:
    """Accuracy points lost by each one-component step of DOREFA_STEPS (where both ran)."""
    acc = {r["method"]: r["accuracy"] for r in rows if r["accuracy"] is not None}
    return {step: 100 * (acc[a] - acc[b]) for step, (a, b) in DOREFA_STEPS.items()
            if a in acc and b in acc}  # fmt: skip


def report(out: Path, data: str, archs: list[str], names: list[str]) -> dict:
    """Read the saved runs of `names` on `archs`, write the table, summary and figures."""
    published = _published()
    summary, tables = {}, []
    for arch in archs:
        rows = []
        for name in names:
            folder = out / data / arch / name
            runs = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
            if runs:
                rows.append(summarize(runs))
        summary[arch] = rows
        tables.append(markdown(rows, data, arch, published))
        claim = dorefa_claim(rows)
        if claim:
            summary[f"{arch}_dorefa_steps"] = claim
            tables.append("DoReFa, points lost by one lower width: " + "; ".join(
                f"{step} {points:+.2f}" for step, points in claim.items()) + "\n")  # fmt: skip
        for key, xlabel in (("bytes", "model bytes (honest: codes, scales, positions)"),
                            ("bops", "BOPs per sample (b_w x b_a per MAC)")):  # fmt: skip
            _figure(rows, key, xlabel, out / f"{data}_{arch}_{key}.png", f"{data}, {arch}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table_{data}.md").write_text("\n".join(tables))
    atomic_write_json(out / f"summary_{data}.json", summary)
    print((out / f"table_{data}.md").read_text())
    return summary
