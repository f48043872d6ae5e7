"""The discrete-net artifact on disk: each layer as `bayesq.sparse_codes` bytes, plus a JSON header.

A discrete net (`bayesq.runtime.DiscreteNet`, made by `bayesq.quantize.quantize_posterior`) is
saved as one safetensors file. Its metadata entry "bayesq" is compact
JSON (version 3):

    {"format": "bayesq.discrete-net", "version": 3, "input_shape": [1, 28, 28],
     "ops": [{"kind": "conv2d", "in_channels": 1, "kernel_size": [5, 5], "stride": [1, 1],
              "padding": [0, 0], ...layer fields...},
             {"kind": "maxpool2d", "kernel_size": 2}, {"kind": "relu"}, {"kind": "flatten"},
             {"kind": "linear", "in_features": 800, "out_features": 500, "act_bits": 8,
              "act_mode": "unsigned", "act_scale": 0.0123, "weight_mode": "signed"}, ...]}

(a glue op is its spec in the vocabulary of `bayesq.ops`), and op i of a layer kind has one tensor "ops.<i>.data" (uint8): the layer encoded by
`bayesq.sparse_codes.encode_layer` (row widths, positions of the kept weights, their codes, the
steps of the kept rows, the biases), so the file holds what `sparse_codes.layer_storage_bits`
counts and nothing more. The op's "crc32" field is the CRC-32 of those bytes, so that a
corrupted byte is refused rather than decoded into other weights. A layer that skips the inputs whose weights are all pruned
(`input_index`) is stored at its full input width with "gather": "kept-columns" (the index is
the set of columns with a kept weight, recomputed on load); any other index is stored as it is,
"gather": "index" with the tensor "ops.<i>.input_index" (int64). Nothing is pickled.

Size: a file is the counted bits (rounded up to a byte per layer) plus the safetensors framing
and the JSON header: about 100 bytes, 250 per layer and 20 per glue op (`header_bytes` measures
it; 0.8 to 1.4 KB for the MLPs and LeNet-5 of the tests).

Loading trusts nothing: the format and version, every op field (types and ranges), every tensor
(names, dtypes, shapes) and the decoded codes are checked; that the layers chain is worked out
from the shapes alone (no tensor is run), and every size is bounded by the limits below, so a
small file cannot ask for a large allocation. Anything else raises ValueError naming the file,
the op and the field. Older versions (1: dense int8 codes; 2: an earlier row-width layout) are
refused with a message saying so.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import zlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import sparse_codes
from .files import MAX_HEADER_BYTES, atomic_path, json_header, read_safetensors
from .ops import glue_module, glue_output_shape, glue_spec
from .runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "MAX_ACTIVATION_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_NET_WEIGHTS",
    "MAX_OPS",
    "header_bytes",
    "load_artifact",
    "save_artifact",
    "storage_bits",
]

ARTIFACT_FORMAT = "bayesq.discrete-net"
ARTIFACT_VERSION = 3
_OLDER_VERSIONS = {1: "dense int8 codes", 2: "an earlier layout of the row widths"}
# Limits on what a header may ask for (per input sample where it is a size):
MAX_OPS = 1024
MAX_ACTIVATION_ELEMENTS = 2**26  # the input, every op's output and every conv's im2col columns
MAX_NET_WEIGHTS = 2**27  # out x fan_in summed over layers (their dense int8 codes: 128 MiB)
# (a layer: at most sparse_codes.MAX_LAYER_WEIGHTS; a conv's padding: at most kernel size - 1,
# since wider padding only adds outputs that see nothing but padding)
_LAYER_KINDS = ("linear", "conv2d")


def _layer_of(op) -> QuantizedLinear:
    return op.linear if isinstance(op, QuantizedConv2d) else op


def _full_codes(linear: QuantizedLinear) -> tuple[torch.Tensor, str | None]:
    """The codes at the layer's input width and how its input_index is stored (None: no index;
    "kept-columns": the columns with a kept weight; "index": stored as it is)."""
    codes, index = linear.weight_codes, linear.input_index
    if index is None:
        return codes, None
    if bool((index[1:] > index[:-1]).all()):
        full = torch.zeros(linear.out_features, linear.in_features, dtype=torch.int8)
        full[:, index] = codes
        if torch.equal(_kept_columns(full), index):
            return full, "kept-columns"
    return codes, "index"


def _kept_columns(codes: torch.Tensor) -> torch.Tensor:
    """The columns with a nonzero code (column 0 alone if none), as `bayesq.quantize` keeps
    them."""
    alive = codes.ne(0).any(0)
    alive[0] |= not bool(alive.any())
    return torch.nonzero(alive).flatten()


def save_artifact(net: DiscreteNet, path: str | os.PathLike, input_shape: tuple[int, ...]) -> Path:
    """Write `net` to `path` atomically (`bayesq.files.atomic_path`). input_shape: one input
    sample's shape, e.g. (1, 28, 28). Returns the path."""
    path = Path(path)
    if not isinstance(net, DiscreteNet):
        raise TypeError(f"net must be a DiscreteNet, got {type(net).__name__}")
    tensors, ops = {}, []
    for i, op in enumerate(net.ops):
        if isinstance(op, QuantizedLinear | QuantizedConv2d):
            linear = _layer_of(op)
            codes, gather = _full_codes(linear)
            encoded = sparse_codes.encode_layer(
                codes.numpy(), linear.row_bits.numpy(), linear.row_scale.numpy(),
                linear.bias.numpy(),
            )  # fmt: skip
            spec = {
                "kind": "conv2d" if isinstance(op, QuantizedConv2d) else "linear",
                "in_features": linear.in_features,
                "out_features": linear.out_features,
                "act_bits": linear.act_bits,
                "act_mode": linear.act_mode,
                "act_scale": float(linear.act_scale),
                "weight_mode": linear.weight_mode,
            }
            spec["crc32"] = zlib.crc32(encoded.data)
            if gather is not None:
                spec["gather"] = gather
            if gather == "index":
                tensors[f"ops.{i}.input_index"] = linear.input_index.contiguous()
            if isinstance(op, QuantizedConv2d):
                spec.update(
                    in_channels=op.in_channels,
                    kernel_size=list(op.kernel_size),
                    stride=list(op.stride),
                    padding=list(op.padding),
                )
            tensors[f"ops.{i}.data"] = torch.frombuffer(bytearray(encoded.data), dtype=torch.uint8)
            ops.append(spec)
        else:
            ops.append(glue_spec(op, f"op {i}"))
    header = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "input_shape": _shape_list(input_shape),
        "ops": ops,
    }
    try:  # refuse to write what load_artifact would refuse
        _chain(header["input_shape"], ops)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"bayesq": json.dumps(header, separators=(",", ":"))})
    return path


def storage_bits(net: DiscreteNet) -> dict:
    """The bits `save_artifact` writes for the layers of `net`, by part and in total, summed
    over `sparse_codes.layer_storage_bits` of each layer (at its full input width): the file is
    these bits, rounded up to a byte per layer, plus `header_bytes`. Keys as in
    layer_storage_bits ("positions", "codes", "scales", "biases", ..., "total", "weights")."""
    if not isinstance(net, DiscreteNet):
        raise TypeError(f"net must be a DiscreteNet, got {type(net).__name__}")
    total: dict = {}
    for op in net.layers:
        linear = _layer_of(op)
        codes, _ = _full_codes(linear)
        parts = sparse_codes.layer_storage_bits(
            codes.numpy(), linear.row_bits.numpy(), linear.row_scale.numpy(), linear.bias.numpy()
        )
        for key, value in parts.items():
            total[key] = total.get(key, 0) + value
    return total


def header_bytes(path: str | os.PathLike) -> int:
    """Bytes of an artifact that are not layer data: the file size minus the "ops.<i>.data"
    tensors (the safetensors framing, the JSON header, any stored input_index)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.endswith(".data")]  # noqa: SIM118
            data = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
        return Path(path).stat().st_size - data
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def _shape_list(input_shape) -> list[int]:
    """input_shape as a list of ints (TypeError for anything else)."""
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, tuple | list) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in input_shape
    ):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
    return [int(d) for d in input_shape]


def load_artifact(path: str | os.PathLike) -> tuple[DiscreteNet, tuple[int, ...]]:
    """Read and validate an artifact; returns the net and the shape of one input sample."""

    def read(f) -> tuple[dict, dict[str, torch.Tensor]]:
        header = _header(f.metadata() or {})
        _chain(header["input_shape"], header["ops"])
        wanted = _expected_tensors(header["ops"])
        present = set(f.keys())
        if present != set(wanted):
            extra, missing = sorted(present - set(wanted)), sorted(set(wanted) - present)
            raise ValueError(f"tensors {missing} are missing, {extra} unexpected")
        tensors = {}
        for key, dtype in wanted.items():
            info = f.get_slice(key)
            if info.get_dtype() != dtype or len(info.get_shape()) != 1:
                raise ValueError(f"tensor {key!r} must be 1-D {dtype}")
            tensors[key] = f.get_tensor(key)
        return header, tensors

    header, tensors = read_safetensors(path, "artifact", read)
    try:
        ops = [_load_op(i, spec, tensors) for i, spec in enumerate(header["ops"])]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    return DiscreteNet(ops), tuple(header["input_shape"])


def _header(metadata: dict) -> dict:
    header = json_header(metadata, ARTIFACT_FORMAT, "discrete-net artifact")
    version = header.get("version")
    if version in _OLDER_VERSIONS:
        raise ValueError(
            f"artifact version {version} ({_OLDER_VERSIONS[version]}, written by an older bayesq) "
            f"is not read by this bayesq, which reads version {ARTIFACT_VERSION}: save the net again"
        )
    if version != ARTIFACT_VERSION:
        raise ValueError(f"artifact version {version!r}, this bayesq reads {ARTIFACT_VERSION}")
    ops = header.get("ops")
    if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
        raise ValueError(f"'ops' must be a list of 1..MAX_OPS ({MAX_OPS}) ops")
    return header


# --- header fields ---------------------------------------------------------------------------------
def _int(spec: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = spec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{where}: {key} must be an int in {lo}..{hi}, got {v!r}")
    return v


def _pair(spec: dict, key: str, lo: int, hi: int, where: str) -> tuple[int, int]:
    v = spec.get(key)
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"{where}: {key} must be a list of two ints, got {v!r}")
    return tuple(_int({key: x}, key, lo, hi, where) for x in v)


def _where(i: int, spec) -> str:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    return f"op {i} ({kind})" if isinstance(kind, str) else f"op {i}"


def _chain(input_shape, ops) -> list[tuple[int, ...]]:
    """Each op's output shape (one sample), worked out from the header alone; checks that the
    layers chain and that every size is within the limits. No tensor is made."""
    if (
        not isinstance(input_shape, list)
        or not 1 <= len(input_shape) <= 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be a list of 1..4 ints >= 1, got {input_shape!r}")
    shape = tuple(input_shape)
    if math.prod(shape) > MAX_ACTIVATION_ELEMENTS:
        raise ValueError(
            f"input_shape {list(shape)} has more than MAX_ACTIVATION_ELEMENTS "
            f"({MAX_ACTIVATION_ELEMENTS}) elements"
        )
    shapes, weights = [], 0
    for i, spec in enumerate(ops):
        where = _where(i, spec)
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in _LAYER_KINDS:
            shape = glue_output_shape(spec, shape, where)
        else:
            out = _int(spec, "out_features", 1, sparse_codes.MAX_LAYER_WEIGHTS, where)
            fan_in = _int(spec, "in_features", 1, sparse_codes.MAX_LAYER_WEIGHTS // out, where)
            weights += out * fan_in
            if weights > MAX_NET_WEIGHTS:
                raise ValueError(f"{where}: the layers hold more than MAX_NET_WEIGHTS weights")
            if kind == "linear":
                if shape != (fan_in,):
                    raise ValueError(f"{where}: needs ({fan_in},) inputs, gets {list(shape)}")
                shape = (out,)
            else:
                shape = _conv_shape(spec, shape, out, fan_in, where)
        if math.prod(shape) > MAX_ACTIVATION_ELEMENTS:
            raise ValueError(f"{where}: output {list(shape)} exceeds MAX_ACTIVATION_ELEMENTS")
        shapes.append(shape)
    return shapes


def _conv_shape(spec: dict, shape: tuple, out: int, fan_in: int, where: str) -> tuple:
    if len(shape) != 3:
        raise ValueError(f"{where}: needs a (C, H, W) input, gets {list(shape)}")
    channels = _int(spec, "in_channels", 1, fan_in, where)
    if channels != shape[0]:
        raise ValueError(f"{where}: in_channels {channels}, the input has {shape[0]} channels")
    kh, kw = _pair(spec, "kernel_size", 1, fan_in, where)
    if channels * kh * kw != fan_in:
        raise ValueError(
            f"{where}: in_channels x kernel_size = {channels * kh * kw} != in_features"
        )
    ph, pw = _pair(spec, "padding", 0, max(kh, kw) - 1, where)
    if ph > kh - 1 or pw > kw - 1:
        raise ValueError(f"{where}: padding must be at most kernel_size - 1, got {[ph, pw]}")
    sh, sw = _pair(spec, "stride", 1, max(shape[1:]) + 2 * max(ph, pw), where)
    oh = (shape[1] + 2 * ph - kh) // sh + 1
    ow = (shape[2] + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{where}: a {shape[1]}x{shape[2]} input is smaller than the kernel")
    if oh * ow * fan_in > MAX_ACTIVATION_ELEMENTS:
        raise ValueError(f"{where}: its im2col columns exceed MAX_ACTIVATION_ELEMENTS")
    return (out, oh, ow)


def _expected_tensors(ops: list) -> dict[str, str]:
    wanted = {}
    for i, spec in enumerate(ops):
        if spec["kind"] in _LAYER_KINDS:
            wanted[f"ops.{i}.data"] = "U8"
            gather = spec.get("gather")
            if gather not in (None, "kept-columns", "index"):
                raise ValueError(f"{_where(i, spec)}: gather must be 'kept-columns' or 'index'")
            if gather == "index":
                wanted[f"ops.{i}.input_index"] = "I64"
    return wanted


def _load_op(i: int, spec: dict, tensors: dict):
    kind, where = spec["kind"], _where(i, spec)
    if kind not in _LAYER_KINDS:
        return glue_module(spec, where)
    out, in_features = spec["out_features"], spec["in_features"]
    gather = spec.get("gather")
    index = tensors.get(f"ops.{i}.input_index")
    fan_in = in_features if index is None else index.shape[0]
    if not 1 <= fan_in <= in_features:
        raise ValueError(f"{where}: input_index must hold 1..in_features entries")
    data = tensors[f"ops.{i}.data"].numpy().tobytes()
    if zlib.crc32(data) != _int(spec, "crc32", 0, 2**32 - 1, where):
        raise ValueError(f"{where}: the layer data do not match their crc32 (a corrupted file)")
    try:
        decoded = sparse_codes.decode_layer(data, out, fan_in)
    except ValueError as err:
        raise ValueError(f"{where}: layer data: {err}") from None
    codes = torch.from_numpy(decoded.codes)
    if gather == "kept-columns":
        index = _kept_columns(codes)
        codes = codes[:, index].contiguous()
    act_scale = spec.get("act_scale")
    if isinstance(act_scale, bool) or not isinstance(act_scale, int | float):
        raise ValueError(f"{where}: act_scale must be a number, got {act_scale!r}")
    for key in ("act_mode", "weight_mode"):
        if not isinstance(spec.get(key), str):
            raise ValueError(f"{where}: {key} must be a string, got {spec.get(key)!r}")
    act_bits = _int(spec, "act_bits", 1, 8, where)
    try:
        linear = QuantizedLinear(
            weight_codes=codes,
            row_bits=torch.from_numpy(decoded.row_bits),
            row_scale=torch.from_numpy(decoded.row_scale),
            bias=torch.from_numpy(decoded.bias),
            act_bits=act_bits,
            act_mode=spec["act_mode"],
            act_scale=float(act_scale),
            weight_mode=spec["weight_mode"],
            input_index=index,
            input_features=in_features if index is not None else None,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if kind == "linear":
        return linear
    return QuantizedConv2d(
        linear,
        spec["in_channels"],
        tuple(spec["kernel_size"]),
        tuple(spec["stride"]),
        tuple(spec["padding"]),
    )
