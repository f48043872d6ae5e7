"""An EBP-D net exported as a discrete artifact and run on the bit-serial kernels.

Trains a binary (or ternary) EBP MLP, exports its deterministic net (`EBPNet.discrete_weights`,
sign units) with `bayesq.quantize.discrete_sign_net` (8-bit input, 1-bit {-1, +1} hidden
activations: XNOR products), saves and reloads the artifact, and checks on the whole test set
that the kernels' logits equal the PyTorch integer reference's and how many predictions agree
with EBP's own deterministic net (which sees the unquantized input). Writes ebp_kernels.json.

  python experiments/ebp_kernels.py --data-dir ../shared/data/mnist --epochs 5
  python experiments/ebp_kernels.py --tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayesq.artifact import load_artifact, save_artifact  # noqa: E402
from bayesq.data import load_dataset  # noqa: E402
from bayesq.ebp import EBPNet  # noqa: E402
from bayesq.quantize import discrete_sign_net  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--hidden", type=int, nargs="+", default=[500])
    p.add_argument("--family", choices=["binary", "ternary"], default="binary")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/ebp_kernels")
    p.add_argument("--tiny", action="store_true", help="digits subset, 1 epoch, 32 hidden units")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data_dir or "digits").flat()
    if args.tiny:
        data = data.subset(train=300, test=200, seed=args.seed)
        args.epochs, args.hidden = 1, [32]
    sizes = [data.x_train.shape[1], *args.hidden, data.num_classes]
    net = EBPNet(sizes, args.family, seed=args.seed)
    net.fit(data.x_train, data.y_train, epochs=args.epochs)
    biases = [layer["bias"] for layer in net.level_probabilities().values()]
    discrete = discrete_sign_net(net.discrete_weights(), biases, data.x_train[:1024], act_bits=8)
    out = Path(args.out)
    path = save_artifact(discrete, out / "ebp_d.safetensors", (sizes[0],))
    loaded, _ = load_artifact(path)
    x = data.x_test.float()
    logits = loaded(x, threads=args.threads)
    reference = loaded.reference(x)
    summary = {
        "sizes": sizes,
        "family": args.family,
        "epochs": args.epochs,
        "test_size": len(x),
        "logits_equal_reference": bool(torch.equal(logits, reference)),
        "predictions_equal_ebp_d": int((logits.argmax(1) == net.predict(x, "deterministic")).sum()),
        "accuracy_ebp_d": net.accuracy(x, data.y_test, "deterministic"),
        "accuracy_kernels": float((logits.argmax(1) == data.y_test).float().mean()),
        "artifact_bytes": path.stat().st_size,
    }
    (out / "ebp_kernels.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
