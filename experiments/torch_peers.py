"""torch's own ways to a smaller or faster net, the peers a user would otherwise pick: int8
dynamic quantization of the Linear layers, FX graph mode static quantization (x86 backend), and
the bytes each takes. Shared by the benchmark and comparison scripts."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

__all__ = ["float_bytes", "int8_dynamic", "int8_static", "state_bytes"]


def int8_dynamic(net: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)


def int8_static(net: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """FX graph mode post-training static quantization, x86 backend, calibrated on `calibration`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(net.eval(), get_default_qconfig_mapping("x86"), (calibration[:1],))
        with torch.no_grad():
            for i in range(0, len(calibration), 256):
                prepared(calibration[i : i + 256])
        return convert_fx(prepared)


def state_bytes(net: nn.Module) -> int:
    """Bytes of a torch net's serialized state dict (written to memory only, never read back)."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def float_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())
