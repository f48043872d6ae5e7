"""The field's quantizers as the modules a method's net is built of (`bayesq.baselines.nets`).

Each weight module wraps a quantizer function of this package and says how its values are
integer codes times scales (``codes``, for the kernels), and what the method does to the float
buffer after each update (``after_step``). Each activation module names the glue op it stands
for and the uniform grid its outputs lie on (``grid``), where they lie on one.

References: the functions' modules (`binary`, `dorefa`, `pact`, `ternary`, `inq`, `fixed_point`)
cite the papers and equations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import binary, dorefa, fixed_point, pact, ternary
from .nets import ActivationQuantizer, NotIntegerCodes, WeightQuantizer

__all__ = [
    "DoReFaActivation",
    "DoReFaWeights",
    "FixedPointActivation",
    "FixedPointWeights",
    "GradientQuantizer",
    "InqWeights",
    "LogActivation",
    "LogWeights",
    "PACTActivation",
    "QNNActivation",
    "QNNWeights",
    "SignActivation",
    "SignWeights",
    "TTQWeights",
    "TWNWeights",
    "XnorBlock",
    "XnorWeights",
]


def _codes(pair) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scale = pair
    return codes.to(torch.int64), scale.detach().to(torch.float32)


# --- weights --------------------------------------------------------------------------------------
class SignWeights(WeightQuantizer):
    """BNN's binary weights sign(w) (0 -> +1) with the clipped straight-through gradient; w
    clipped to [-1, 1] after each update (Hubara et al. 2016, Alg. 1). Codes +-1, scale 1."""

    bits = 1

    def forward(self, w):
        return binary.sign_ste(w)

    def codes(self, w):
        return torch.where(w >= 0, 1, -1).to(torch.int64), torch.tensor(1.0)

    @torch.no_grad()
    def after_step(self, w):
        w.clamp_(-1.0, 1.0)


class QNNWeights(WeightQuantizer):
    """QNN's k-bit weights on [-1, 1] (`binary.qnn_quantize`), w clipped to [-1, 1] after
    each update as BNN's buffers are."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w):
        return binary.qnn_quantize(w, self.bits)

    def codes(self, w):
        return _codes(binary.qnn_weight_codes(w, self.bits))

    @torch.no_grad()
    def after_step(self, w):
        w.clamp_(-1.0, 1.0)


class XnorWeights(WeightQuantizer):
    """BWN / XNOR-Net weights alpha_o sign(W_o), alpha_o the mean |W| of filter o."""

    bits = 1

    def forward(self, w):
        return binary.xnor_weight(w)

    def codes(self, w):
        return _codes(binary.xnor_weight_codes(w))


class DoReFaWeights(WeightQuantizer):
    """DoReFa-Net's k-bit weights (`dorefa.dorefa_weight`); 32 bits: float."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w):
        return dorefa.dorefa_weight(w, self.bits)

    def codes(self, w):
        if self.bits == dorefa.FULL_PRECISION:
            raise NotIntegerCodes("DoReFa with 32-bit weights keeps float weights")
        return _codes(dorefa.dorefa_weight_codes(w, self.bits))


class TWNWeights(WeightQuantizer):
    """TWN's ternary weights alpha t, threshold 0.7 mean|W| per layer (`ternary.twn_ternary`)."""

    bits = 2

    def forward(self, w):
        return ternary.twn_ternary(w)

    def codes(self, w):
        return _codes(ternary.twn_codes(w))


class TTQWeights(WeightQuantizer):
    """TTQ's ternary weights {-W_n, 0, W_p} with learned scales (`ternary.TTQWeight`): integer
    codes times one scale only when W_n == W_p, so the kernels do not run them in general."""

    bits = 2

    def __init__(self, threshold: float = 0.05, init_scale: float = 1.0) -> None:
        super().__init__()
        self.scales = ternary.TTQWeight(threshold, init_scale)

    def forward(self, w):
        return self.scales(w)

    def codes(self, w):
        scales = self.scales
        try:
            return _codes(ternary.ttq_codes(w, scales.w_pos.detach(), scales.w_neg.detach(),
                                            scales.threshold))  # fmt: skip
        except ValueError as e:
            raise NotIntegerCodes(str(e)) from e


class InqWeights(WeightQuantizer):
    """INQ's weights (Zhou et al. 2017): the float buffer itself, whose frozen part holds powers
    of two (`inq.InqSchedule` writes them); once every weight is frozen its codes are the
    powers of two as signed integers (`inq.inq_codes`). ``exponents`` (n1, n2) are set by the
    schedule."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.exponents: tuple[int, int] | None = None
        self.register_buffer("frozen", torch.zeros(0, dtype=torch.bool), persistent=False)

    def forward(self, w):
        return w

    def codes(self, w):
        if self.exponents is None or self.frozen.shape != w.shape or not bool(self.frozen.all()):
            raise NotIntegerCodes("INQ's weights are powers of two only once all are frozen")
        from .inq import inq_codes

        return _codes(inq_codes(w, *self.exponents))


class FixedPointWeights(WeightQuantizer):
    """Fixed point weights (Courbariaux et al. 2014): `bits` bits with `fraction_bits` after the
    point in the propagations, the stored buffer rounded to `update_bits` after each update (the
    paper's separate propagation and update widths). ``dynamic``: the fraction bits are the
    group's shared exponent, moved by the overflow rate after each update (dynamic fixed point).
    The propagated codes are kept symmetric, -(2^(b-1) - 1) .. 2^(b-1) - 1: two's complement's
    extra -2^(b-1) is clamped to the next level, as the kernels' rows of width b hold -n .. n."""

    def __init__(
        self, bits: int, fraction_bits: int, update_bits: int, dynamic: bool = False
    ) -> None:
        super().__init__()
        self.bits, self.update_bits = int(bits), int(update_bits)
        self.fraction_bits, self.dynamic = int(fraction_bits), bool(dynamic)

    def forward(self, w):
        q = fixed_point.fixed_point(w, self.bits, self.fraction_bits)
        return q.clamp(min=-(2 ** (self.bits - 1) - 1) * 2.0**-self.fraction_bits)

    def codes(self, w):
        codes, scale = _codes(fixed_point.fixed_point_codes(w, self.bits, self.fraction_bits))
        return codes.clamp(min=-(2 ** (self.bits - 1) - 1)), scale

    @torch.no_grad()
    def after_step(self, w):
        if self.dynamic:
            self.fraction_bits = fixed_point.update_fraction_bits(w, self.bits, self.fraction_bits)
        # the update width keeps (update_bits - bits) more fraction bits than the propagations
        extra = self.update_bits - self.bits
        fixed_point.round_parameters_([w], self.update_bits, self.fraction_bits + extra)


class LogWeights(WeightQuantizer):
    """Base-2 logarithmic weights, one of `bits` bits the sign (Miyashita et al. 2016), full
    scale range FSR = ceil(log2 max|W|) read from the weights at each forward pass."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def _fsr(self, w) -> int:
        peak = float(w.detach().abs().max())
        return int(torch.tensor(peak).log2().ceil()) + 1 if peak > 0 else 0

    def forward(self, w):
        return fixed_point.log_quantize(w, self.bits, self._fsr(w), signed=True)

    def codes(self, w):
        return _codes(fixed_point.log_codes(w, self.bits, self._fsr(w), signed=True))


# --- activations ----------------------------------------------------------------------------------
class SignActivation(ActivationQuantizer):
    """BNN's binary activations sign(x) with the clipped straight-through gradient: the "sign"
    glue op of a discrete net (+-1 codes)."""

    glue, bits = "sign", 1

    def forward(self, x):
        return binary.sign_ste(x)


class QNNActivation(ActivationQuantizer):
    """QNN's k-bit activations on [-1, 1] (`binary.qnn_quantize`): the odd multiples c / m of
    1 / m, m = 2^k - 1, both signs (no ReLU glue). As a grid: c = 2 q + 1, so the values are
    (2 / m) q + 1 / m with q the signed k-bit codes -2^(k-1) .. 2^(k-1) - 1, which a
    round-to-nearest quantizer finds on x - 1 / m (ties aside: QNN sends them up)."""

    glue = None

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, x):
        return binary.qnn_quantize(x, self.bits)

    def grid(self):
        m = 2**self.bits - 1
        return {"bits": self.bits, "mode": "signed", "scale": 2.0 / m, "offset": 1.0 / m}


class DoReFaActivation(ActivationQuantizer):
    """DoReFa's k-bit activations quantize_k(clip(x, 0, 1)): unsigned codes, scale 1/(2^k-1)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, x):
        return dorefa.dorefa_activation(x, self.bits)

    def grid(self):
        if self.bits > 8:
            return None
        return {"bits": self.bits, "mode": "unsigned", "scale": 1.0 / (2**self.bits - 1)}


class PACTActivation(ActivationQuantizer):
    """PACT's k-bit activations with a learned clipping level alpha (`pact.PACT`): unsigned
    codes, scale alpha/(2^k-1). ``penalty()`` is alpha^2 (the paper's L2 on alpha)."""

    def __init__(self, bits: int, alpha_init: float = 10.0) -> None:
        super().__init__()
        self.bits = int(bits)
        self.clip = pact.PACT(bits, alpha_init)

    def forward(self, x):
        return self.clip(x)

    def grid(self):
        return {"bits": self.bits, "mode": "unsigned",
                "scale": float(self.clip.alpha.detach()) / (2**self.bits - 1)}  # fmt: skip


class FixedPointActivation(ActivationQuantizer):
    """Fixed point activations after a ReLU: `bits`-bit two's complement with `fraction_bits`,
    so the non-negative values are unsigned codes of bits - 1 bits, scale 2^-f. ``dynamic``:
    the fraction bits move with the overflow rate of each training batch."""

    def __init__(self, bits: int, fraction_bits: int, dynamic: bool = False) -> None:
        super().__init__()
        self.bits, self.fraction_bits, self.dynamic = int(bits), int(fraction_bits), bool(dynamic)

    def forward(self, x):
        x = F.relu(x)
        if self.dynamic and self.training:
            self.fraction_bits = fixed_point.update_fraction_bits(
                x.detach(), self.bits, self.fraction_bits
            )
        return fixed_point.fixed_point(x, self.bits, self.fraction_bits)

    def grid(self):
        if self.bits - 1 > 8:
            return None
        return {"bits": self.bits - 1, "mode": "unsigned", "scale": 2.0**-self.fraction_bits}


class LogActivation(ActivationQuantizer):
    """Base-2 logarithmic activations after a ReLU (Miyashita et al. 2016, Eq. 3) with a fixed
    full scale range: powers of two, no uniform grid (the discrete net calibrates its own)."""

    def __init__(self, bits: int, fsr: int) -> None:
        super().__init__()
        self.bits, self.fsr = int(bits), int(fsr)

    def forward(self, x):
        return fixed_point.log_quantize(F.relu(x), self.bits, self.fsr)


class GradientQuantizer(nn.Module):
    """DoReFa's k-bit gradient quantizer on a layer's output: identity in the forward pass
    (``identity_forward``: a discrete net leaves it out), the stochastic quantizer of Eq. 12 on
    the gradient flowing back."""

    identity_forward = True

    def __init__(self, bits: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.bits, self.generator = int(bits), generator

    def forward(self, x):
        return dorefa.quantize_gradient(x, self.bits, self.generator) if self.training else x


class XnorBlock(nn.Module):
    """XNOR-Net's binary convolution or product (Rastegari et al. 2016, Sec. 3.2): sign of the
    inputs, binary weights alpha sign(W), the output scaled by the inputs' per-sample scale K
    (`binary.xnor_input_scale`). K varies per sample and position, which the kernels' per-row
    scales cannot hold: such a net has no discrete form (export raises NotIntegerCodes)."""

    no_discrete_form = "XNOR-Net's per-sample input scale K is no per-row scale of the kernels"

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        if isinstance(self.layer, nn.Conv2d):
            scale = binary.xnor_input_scale(
                x, self.layer.kernel_size, self.layer.stride, self.layer.padding
            )
        else:
            scale = binary.xnor_input_scale(x)
        return self.layer(binary.xnor_input(x)) * scale
