"""The discrete-net artifact on disk: safetensors tensors plus a JSON header, loaded with checks.

A discrete net (`bayesq.runtime.DiscreteNet`, made by `bayesq.quantize.quantize_posterior` or
`DiscreteNet.from_vnq`) is saved as one safetensors file. Its metadata entry "bayesq" is JSON:

    {"format": "bayesq.discrete-net", "version": 1, "input_shape": [1, 28, 28],
     "ops": [{"kind": "conv2d", "in_channels": 1, "kernel_size": [5, 5], "stride": [1, 1],
              "padding": [0, 0], ...layer fields...},
             {"kind": "maxpool2d", "kernel_size": 2}, {"kind": "relu"}, {"kind": "flatten"},
             {"kind": "sign"},
             {"kind": "linear", "in_features": 800, "out_features": 500, "act_bits": 8,
              "act_mode": "unsigned", "act_scale": 0.0123, "weight_mode": "signed"}, ...]}

and op i of a layer kind has the tensors "ops.<i>.codes" (int8, out x fan_in), "ops.<i>.row_bits"
(int64, out), "ops.<i>.row_scale" and "ops.<i>.bias" (float32, out), and, when pruned inputs were
dropped, "ops.<i>.input_index" (int64). Nothing is pickled. `load_artifact` checks the format
and version, every op and tensor (names, dtypes, shapes, codes within their row's width, finite
scales), and that the layers chain: a truncated, corrupted or mismatched file raises ValueError
naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear, Sign

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "load_artifact", "save_artifact"]

ARTIFACT_FORMAT = "bayesq.discrete-net"
ARTIFACT_VERSION = 1
_LAYER_TENSORS = {
    "codes": torch.int8,
    "row_bits": torch.int64,
    "row_scale": torch.float32,
    "bias": torch.float32,
}


def save_artifact(net: DiscreteNet, path: str | os.PathLike, input_shape: tuple[int, ...]) -> Path:
    """Write `net` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    tensors, ops = {}, []
    for i, op in enumerate(net.ops):
        if isinstance(op, QuantizedLinear | QuantizedConv2d):
            linear = op.linear if isinstance(op, QuantizedConv2d) else op
            spec = {
                "kind": "conv2d" if isinstance(op, QuantizedConv2d) else "linear",
                "in_features": linear.in_features,
                "out_features": linear.out_features,
                "act_bits": linear.act_bits,
                "act_mode": linear.act_mode,
                "act_scale": float(linear.act_scale),
                "weight_mode": linear.weight_mode,
            }
            if isinstance(op, QuantizedConv2d):
                spec.update(
                    in_channels=op.in_channels,
                    kernel_size=list(op.kernel_size),
                    stride=list(op.stride),
                    padding=list(op.padding),
                )
            tensors[f"ops.{i}.codes"] = linear.weight_codes.contiguous()
            tensors[f"ops.{i}.row_bits"] = linear.row_bits.to(torch.int64).contiguous()
            tensors[f"ops.{i}.row_scale"] = linear.row_scale.contiguous()
            tensors[f"ops.{i}.bias"] = linear.bias.contiguous()
            if linear.input_index is not None:
                tensors[f"ops.{i}.input_index"] = linear.input_index.contiguous()
            ops.append(spec)
        elif isinstance(op, nn.ReLU):
            ops.append({"kind": "relu"})
        elif isinstance(op, nn.Flatten):
            ops.append({"kind": "flatten"})
        elif isinstance(op, Sign):
            ops.append({"kind": "sign"})
        elif isinstance(op, nn.MaxPool2d):
            ops.append({"kind": "maxpool2d", "kernel_size": int(_single(op.kernel_size))})
        else:
            raise ValueError(f"cannot save a {type(op).__name__}")
    header = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "input_shape": [int(d) for d in input_shape],
        "ops": ops,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"bayesq": json.dumps(header)})
    os.replace(tmp, path)
    return path


def _single(v) -> int:
    return v if isinstance(v, int) else v[0]


def load_artifact(path: str | os.PathLike) -> tuple[DiscreteNet, tuple[int, ...]]:
    """Read and validate an artifact; returns the net and the shape of one input."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such artifact file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        header = json.loads(metadata["bayesq"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the JSON header is missing or malformed ({err})") from err
    if not isinstance(header, dict) or header.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{path}: not a bayesq discrete-net artifact")
    if header.get("version") != ARTIFACT_VERSION:
        raise ValueError(
            f"{path}: artifact version {header.get('version')!r}, this bayesq reads {ARTIFACT_VERSION}"
        )
    try:
        input_shape = tuple(int(d) for d in header["input_shape"])
        ops = [_load_op(i, spec, tensors) for i, spec in enumerate(header["ops"])]
        net = DiscreteNet(ops)
        net.reference(torch.zeros(1, *input_shape))  # the layers must chain
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: {err}") from err
    return net, input_shape


def _tensor(tensors: dict, key: str, dtype: torch.dtype) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"tensor {key!r} is missing")
    t = tensors[key]
    if t.dtype != dtype:
        raise ValueError(f"tensor {key!r} is {t.dtype}, expected {dtype}")
    return t


def _load_op(i: int, spec: dict, tensors: dict):
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "relu":
        return nn.ReLU()
    if kind == "flatten":
        return nn.Flatten()
    if kind == "sign":
        return Sign()
    if kind == "maxpool2d":
        return nn.MaxPool2d(int(spec["kernel_size"]))
    if kind not in ("linear", "conv2d"):
        raise ValueError(f"op {i}: unknown kind {kind!r}")
    t = {name: _tensor(tensors, f"ops.{i}.{name}", dtype) for name, dtype in _LAYER_TENSORS.items()}
    codes, row_bits = t["codes"], t["row_bits"]
    if codes.dim() != 2 or codes.shape[0] != int(spec["out_features"]):
        raise ValueError(f"op {i}: codes {tuple(codes.shape)} do not match out_features")
    if row_bits.shape != (codes.shape[0],) or bool((row_bits < 0).any() | (row_bits > 8).any()):
        raise ValueError(f"op {i}: row_bits must be (out,) with widths in 0..8")
    weight_mode = str(spec.get("weight_mode", "signed"))
    magnitude = codes.abs().to(torch.int64)
    if weight_mode == "pm1":  # one plane per row: every code -1 or +1 (a pruned row: all 0)
        bad = torch.where(row_bits[:, None] > 0, magnitude != 1, magnitude != 0).any()
        bad |= (row_bits > 1).any()
    else:
        top = torch.where(row_bits > 0, 2 ** (row_bits - 1).clamp(min=0) - 1, 0)
        bad = (magnitude > top[:, None]).any()
    if bool(bad):
        raise ValueError(f"op {i}: codes lie outside their row's width")
    index = tensors.get(f"ops.{i}.input_index")
    linear = QuantizedLinear(
        weight_codes=codes,
        row_bits=row_bits,
        row_scale=t["row_scale"],
        bias=t["bias"],
        act_bits=int(spec["act_bits"]),
        act_mode=str(spec["act_mode"]),
        act_scale=float(spec["act_scale"]),
        weight_mode=weight_mode,
        input_index=index,
        input_features=int(spec["in_features"]) if index is not None else None,
    )
    if linear.in_features != int(spec["in_features"]):
        raise ValueError(
            f"op {i}: codes have {linear.in_features} inputs, header says {spec['in_features']}"
        )
    if kind == "linear":
        return linear
    return QuantizedConv2d(
        linear,
        int(spec["in_channels"]),
        tuple(int(k) for k in spec["kernel_size"]),
        tuple(int(s) for s in spec["stride"]),
        tuple(int(p) for p in spec["padding"]),
    )
