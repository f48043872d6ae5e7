"""VNQ end to end: float baseline -> VNQ posterior (Pyro SVI) -> ternary net, with a report.

Writes under --out (default results/vnq_<data>_<arch>/):
  report.json       accuracy float / VNQ mean / ternary, sparsity, bits, epochs, times, config
  float.safetensors the trained float net (reused if present, so a rerun does not retrain it)
  vnq.ckpt          the VNQ training checkpoint (an interrupted run resumes from its last epoch)
  posterior.safetensors  the fitted posterior (`VNQ.posterior`, `Posterior.save`): every layer's
                    theta, sigma^2, codebook and cell masses with the net's structure; what
                    experiments.bits, experiments.discrete_inference and the figures read
  theta_log_alpha.png  theta against log alpha for one layer, codebook levels marked

Every file is written atomically (bayesq.files): a killed run leaves whole files or none. A file
this script cannot read back (say, from an older version) stops it with a message naming the file.

Examples:
  python -m experiments.vnq                                    # digits, MLP 64-512-256-10
  python -m experiments.vnq --data-dir ../shared/data/mnist --arch lenet5
  python -m experiments.vnq --tiny                             # a seconds-long smoke run
  python -m experiments.vnq --tiny --vnq-epochs 5              # explicit flags win over --tiny
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import models
from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_write_json
from bayesq.plots import plot_theta_vs_log_alpha
from bayesq.posterior import Posterior, PruningRule
from bayesq.train import accuracy, fit_deterministic
from bayesq.vnq import VNQ, to_vnq_
from bayesq.vnq_snap import quantize_vnq_
from experiments.runs import arch_kwargs, load_state_into, save_state

# Per data set: architecture and schedule that reach the targets in the README.
DEFAULTS = {
    "digits": dict(arch="mlp", float_epochs=60, vnq_epochs=100, lr=3e-3, zero_share=0.7, batch=64),
    "mnist": dict(
        arch="lenet5", float_epochs=20, vnq_epochs=60, lr=1e-3, zero_share=0.8, batch=128
    ),
}
# --tiny: the schedule of a smoke run; a flag given explicitly still wins over it.
TINY = dict(float_epochs=2, vnq_epochs=2)
TINY_TRAIN, TINY_TEST = 256, 256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data-dir", default=None, help="MNIST IDX directory (default: embedded digits)"
    )
    p.add_argument("--arch", choices=sorted(models.ARCHITECTURES), default=None)
    p.add_argument("--float-epochs", type=int, default=None)
    p.add_argument("--vnq-epochs", type=int, default=None)
    p.add_argument("--kl-warmup-epochs", type=int, default=None, help="default: min(15, epochs/3)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate of the VNQ fit")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--zero-share",
        type=float,
        default=None,
        help="share of weights starting nearest the zero spike (sets r; see bayesq.nn)",
    )
    p.add_argument("--levels", type=int, default=3, help="codebook size (odd; 3 = ternary)")
    p.add_argument("--log-alpha-threshold", type=float, default=3.0)
    p.add_argument("--plot-layer", default=None, help="layer for the scatter (default: largest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None)
    p.add_argument("--tiny", action="store_true", help="a few epochs on a slice: a smoke test")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_config(args) -> dict:
    """The run's configuration: each explicit flag, else --tiny's schedule, else the data set's
    default (DEFAULTS), in that order of precedence."""
    data_name = "digits" if args.data_dir is None else "mnist"
    cfg = dict(DEFAULTS[data_name])
    if args.tiny:
        cfg.update(TINY)
    for key, flag in [
        ("arch", "arch"),
        ("float_epochs", "float_epochs"),
        ("vnq_epochs", "vnq_epochs"),
        ("lr", "lr"),
        ("zero_share", "zero_share"),
        ("batch", "batch_size"),
    ]:
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    for key in ("float_epochs", "vnq_epochs", "batch"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if not cfg["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {cfg['lr']}")
    warmup = args.kl_warmup_epochs
    if warmup is None:
        warmup = min(15, max(1, cfg["vnq_epochs"] // 3))
    if warmup < 0:
        raise ValueError(f"--kl-warmup-epochs must be >= 0, got {warmup}")
    cfg.update(data=data_name, kl_warmup_epochs=warmup)
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = resolve_config(args)
    data_name, warmup = cfg["data"], cfg["kl_warmup_epochs"]

    data = load_dataset(args.data_dir or "digits")
    if args.tiny:
        data = data.subset(train=TINY_TRAIN, test=TINY_TEST, seed=args.seed)
    out = Path(args.out or f"results/vnq_{data_name}_{cfg['arch']}{'_tiny' if args.tiny else ''}")
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    train_loader, _ = data.loaders(cfg["batch"], seed=args.seed)

    # 1. Float baseline (reused from disk when this configuration trained it before).
    torch.manual_seed(args.seed)
    net = models.build(cfg["arch"], **arch_kwargs(cfg["arch"], data.image_shape))
    float_path = out / "float.safetensors"
    t0 = time.perf_counter()
    if float_path.exists():
        load_state_into(net, float_path)
        float_seconds = None
    else:
        fit_deterministic(
            net,
            train_loader,
            cfg["float_epochs"],
            lr=1e-3 if data_name == "mnist" else 3e-3,
            seed=args.seed,
            progress=progress,
        )
        float_seconds = time.perf_counter() - t0
        save_state(net, float_path)
    acc_float = accuracy(net, data.x_test, data.y_test)
    print(f"float {cfg['arch']}: test accuracy {acc_float:.4f}")

    # 2. VNQ posterior, started at the float weights.
    vnq_net = to_vnq_(copy.deepcopy(net), num_levels=args.levels, zero_share=cfg["zero_share"])
    vnq = VNQ(vnq_net, num_data=len(data.y_train), seed=args.seed)
    if args.plot_layer is not None and args.plot_layer not in vnq.layers:
        raise ValueError(f"--plot-layer {args.plot_layer!r} is not one of {sorted(vnq.layers)}")
    # A loader of its own: the fit (and a resume of it) does not depend on whether the float
    # net above was trained, which draws from a loader's shuffle generator, or read from disk.
    vnq_loader, _ = data.loaders(cfg["batch"], seed=args.seed)
    t0 = time.perf_counter()
    vnq.fit(
        vnq_loader,
        cfg["vnq_epochs"],
        lr=cfg["lr"],
        kl_warmup_epochs=warmup,
        checkpoint=out / "vnq.ckpt",
        progress=progress,
    )
    vnq_seconds = time.perf_counter() - t0

    # 3. Quantize: prune by log alpha, snap the rest to the codebook.
    pruning = PruningRule(log_alpha_threshold=args.log_alpha_threshold)
    report = quantize_vnq_(vnq_net, pruning, data.x_test, data.y_test)
    summary = report.to_dict()
    summary.update(
        data=data_name,
        arch=cfg["arch"],
        accuracy_float=acc_float,
        seed=args.seed,
        float_epochs=cfg["float_epochs"],
        vnq_epochs=cfg["vnq_epochs"],
        kl_warmup_epochs=warmup,
        lr=cfg["lr"],
        zero_share_init=cfg["zero_share"],
        batch_size=cfg["batch"],
        train_size=len(data.y_train),
        test_size=len(data.y_test),
        float_train_seconds=float_seconds,
        vnq_train_seconds_this_run=vnq_seconds,
        history=vnq.history,
        threads=torch.get_num_threads(),
    )
    atomic_write_json(out / "report.json", summary)
    # the fitted posterior with the net's structure: the one file the other scripts read
    vnq.posterior(data.image_shape).save(out / "posterior.safetensors")

    plot_layer = args.plot_layer or max(vnq.layers, key=lambda n: vnq.layers[n].theta.numel())
    plot_from_saved(out, plot_layer, pruning)

    s = summary["summary"]
    print(f"VNQ mean:  test accuracy {report.accuracy_mean:.4f}")
    # with one level (Sparse VD's prior) every weight snaps to 0: bit budgets keep the weights
    # log alpha does not prune (experiments/bits.py)
    label = "ternary" if args.levels == 3 else f"{args.levels}-level"
    print(
        f"{label + ':':<10} test accuracy {report.accuracy_quantized:.4f} "
        f"({100 * (report.accuracy_quantized - acc_float):+.2f} points vs float)"
        + ("; a one-level codebook snaps every weight to 0" if args.levels == 1 else "")
    )
    print(
        f"pruned (log alpha >= {args.log_alpha_threshold:g}): {s['pruned_share']:.1%}; "
        f"zero after quantization: {s['zero_share']:.1%}; "
        f"bits/weight: {s['stored_bits_per_weight']:.2f} stored in all (positions "
        f"{s['position_bits_per_weight']:.2f}, codes, scales, biases); codes only: "
        f"{s['code_bits_per_weight']:.2f} dense, {s['entropy_bits_per_weight']:.2f} entropy"
    )
    print(f"written to {out}/")
    return summary


def plot_from_saved(out: Path, layer: str, pruning: PruningRule) -> Path:
    """Draws the theta-vs-log-alpha figure from posterior.safetensors (no retraining)."""
    path = out / "posterior.safetensors"
    posterior = Posterior.load(path)
    if layer not in posterior.layers:
        raise ValueError(f"{path}: holds no layer {layer!r} (it holds {list(posterior.layers)})")
    saved = posterior.layers[layer]
    return plot_theta_vs_log_alpha(
        saved.mean.flatten().numpy(),
        saved.log_alpha.flatten().numpy(),
        saved.levels.numpy(),
        pruning,
        out / "theta_log_alpha.png",
        title=f"VNQ posterior, layer {layer}",
    )


if __name__ == "__main__":
    run_main(main)
