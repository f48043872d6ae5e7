"""An EBP-D net exported as a discrete artifact and run on the bit-serial kernels.

Trains a binary (or ternary) EBP MLP, builds the discrete net of its posterior
(`EBPNet.posterior` through `bayesq.quantize.quantize_posterior`: each weight at its most
probable level, sign units; 8-bit input, 1-bit {-1, +1} hidden activations: XNOR products), saves and reloads the artifact, and checks on the whole test set
that the kernels' logits equal the PyTorch integer reference's and how many predictions agree
with EBP's own deterministic net (which sees the unquantized input). Writes ebp_kernels.json.

EBP trains on centred inputs x - m (m: the training mean of each feature, as experiments/ebp.py
does by default; --inputs raw trains on x). The artifact still takes raw inputs: the EBP-D net's
first layer is linear in its input, W (x - m) + b = W x + (b - W m), so m is folded into the
first layer's biases (`input_shift`) and the kernels see unsigned 8-bit pixels as before.

  python -m experiments.ebp_kernels --data-dir ../shared/data/mnist --epochs 5
  python -m experiments.ebp_kernels --tiny
  python -m experiments.ebp_kernels --tiny --epochs 3      # explicit flags win over --tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bayesq.artifact import load_artifact, save_artifact
from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.ebp import EBPNet
from bayesq.files import atomic_write_json
from bayesq.quantize import quantize_posterior
from bayesq.train import accuracy

# The defaults of a full run, and of --tiny (digits subset); a flag given explicitly wins.
FULL = dict(hidden=[500], epochs=5)
TINY = dict(hidden=[32], epochs=1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="default 500 (tiny: 32)")
    p.add_argument("--family", choices=["binary", "ternary"], default="binary")
    p.add_argument("--epochs", type=int, default=None, help="default 5 (tiny: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--inputs",
        choices=["centered", "raw"],
        default="centered",
        help="EBP's training inputs: minus the training mean of each feature (default), or raw",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/ebp_kernels")
    p.add_argument("--tiny", action="store_true", help="digits subset, 1 epoch, 32 hidden units")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1 or args.threads < 1 or min(args.hidden) < 1:
        raise ValueError(
            f"--epochs, --threads and --hidden must be >= 1, got {args.epochs}, {args.threads}, "
            f"{args.hidden}"
        )
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data_dir or "digits").flat()
    if args.tiny:
        data = data.subset(train=300, test=200, seed=args.seed)
    sizes = [data.x_train.shape[1], *args.hidden, data.num_classes]
    shift = data.x_train.mean(0) if args.inputs == "centered" else torch.zeros(sizes[0])
    net = EBPNet(sizes, args.family, seed=args.seed)
    net.fit(data.x_train - shift, data.y_train, epochs=args.epochs)
    calibration = data.x_train[:1024].float()
    discrete = quantize_posterior(net.posterior(), calibration, act_bits=8, input_shift=shift)
    out = Path(args.out)
    path = save_artifact(discrete, out / "ebp_d.safetensors", (sizes[0],))
    loaded, _ = load_artifact(path)
    x = data.x_test.float()
    logits = loaded(x, threads=args.threads)
    reference = loaded.reference(x)
    ebp_d = net.predict(x - shift, "deterministic")
    summary = {
        "sizes": sizes,
        "family": args.family,
        "epochs": args.epochs,
        "inputs": args.inputs,
        "test_size": len(x),
        "logits_equal_reference": bool(torch.equal(logits, reference)),
        "predictions_equal_ebp_d": int((logits.argmax(1) == ebp_d).sum()),
        "accuracy_ebp_d": (ebp_d == data.y_test).double().mean().item(),
        "accuracy_ebp_p": net.accuracy(x - shift, data.y_test),
        "accuracy_kernels": accuracy(lambda batch: batch, logits, data.y_test),
        "artifact_bytes": path.stat().st_size,
    }
    atomic_write_json(out / "ebp_kernels.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run_main(main)
