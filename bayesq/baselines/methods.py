"""The field's methods, each as a recipe: how to build its net from a reference net, and train it.

A :class:`Method` names its paper, the weight / activation / gradient bits it trains with, how
its net is built (`bayesq.baselines.nets.quantized_net` with the method's modules of
`bayesq.baselines.modules`), and how it is trained within an epoch budget (:class:`Budget`):

  * one-stage methods train from scratch with `bayesq.baselines.training.fit_method` for all the
    epochs (BinaryConnect, BNN, QNN, XNOR-Net, BWN, DoReFa, TWN, PACT, fixed point, log);
  * staged methods start from a float net trained for half of the epochs and spend the other
    half on their stages: TTQ (ternarize the pretrained weights, train the scales and latent
    weights), INQ (the accumulated portions 50, 75, 87.5, 100%, retraining after all but the
    last; Zhou et al. 2017, Sec. 3), Deep Compression (prune, retrain, share weights by
    k-means, fine-tune the centroids; Han et al. 2016, Fig. 1).

Every method gets the same data, the same loop, the same seeds and the same number of epochs;
what differs is what its paper specifies. `METHODS` lists them by name; :func:`method` gives one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from . import deep_compression as dc
from .inq import InqSchedule
from .modules import (
    DoReFaActivation,
    DoReFaWeights,
    FixedPointActivation,
    FixedPointWeights,
    GradientQuantizer,
    InqWeights,
    LogActivation,
    LogWeights,
    PACTActivation,
    QNNActivation,
    QNNWeights,
    SignActivation,
    SignWeights,
    TTQWeights,
    TWNWeights,
    XnorBlock,
    XnorWeights,
)
from .nets import (
    BinaryConnectWeights,
    FloatWeights,
    glorot_scale,
    quantized_layers,
    quantized_net,
)
from .training import fit_method, recalibrate_batch_norm_

__all__ = ["Budget", "METHODS", "Method", "method"]


@dataclass(frozen=True)
class Budget:
    """What every method gets: epochs, batch size, Adam's learning rate, the seed."""

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class Method:
    """A method of the field as a recipe.

    name: its key in METHODS; label: for tables; paper: the citation; bits: (W, A, G) as trained
    (32 = float); build(reference) -> the method's net; fit(net, x, y, budget) -> a dict of what
    the training reports (losses, and for Deep Compression its storage); staged: trained from
    a pretrained float net (half the budget).
    """

    name: str
    label: str
    paper: str
    bits: tuple[int, int, int]
    build: Callable[[nn.Sequential], nn.Sequential]
    fit: Callable | None = None
    staged: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def train(self, net: nn.Sequential, x, y, budget: Budget) -> dict:
        """Train `net` (from `build`) on (x, y) within `budget`; returns the training report."""
        if self.fit is not None:
            return self.fit(net, x, y, budget)
        losses = fit_method(net, x, y, budget.epochs, budget.batch_size, budget.lr,
                            budget.seed, progress=budget.progress, label=self.name)  # fmt: skip
        return {"losses": losses}


def _uniform(weights: Callable[[], nn.Module], activation=None, batch_norm=True, gradient=None):
    def build(reference: nn.Sequential) -> nn.Sequential:
        return quantized_net(reference, lambda name, m: weights(), activation, batch_norm, gradient)

    return build


# --- staged methods ---------------------------------------------------------------------------
def _half(budget: Budget) -> tuple[int, int]:
    first = max(1, budget.epochs // 2)
    return first, max(1, budget.epochs - first)


def _pretrain(net, x, y, budget: Budget, epochs: int, label: str) -> list[float]:
    """Train the net's float twin: every quantizer swapped for float weights, then restored."""
    layers = quantized_layers(net)
    saved = [layer.quantizer for layer in layers]
    for layer in layers:
        layer.quantizer = FloatWeights()
    try:
        return fit_method(net, x, y, epochs, budget.batch_size, budget.lr, budget.seed,
                          progress=budget.progress, label=f"{label} float")  # fmt: skip
    finally:
        for layer, quantizer in zip(layers, saved, strict=True):
            layer.quantizer = quantizer


def _fit_ttq(net, x, y, budget: Budget) -> dict:
    """TTQ (Zhu et al. 2017, Sec. 3): latent weights from a pretrained float net, normalised to
    [-1, 1] per layer, then trained with the scales W_p, W_n."""
    first, rest = _half(budget)
    pre = _pretrain(net, x, y, budget, first, "ttq")
    from .ternary import ttq_normalize_

    for layer in quantized_layers(net):
        ttq_normalize_(layer.weight.data)
    losses = fit_method(net, x, y, rest, budget.batch_size, budget.lr, budget.seed + 1,
                        progress=budget.progress, label="ttq")  # fmt: skip
    return {"pretrain_losses": pre, "losses": losses}


def _fit_inq(net, x, y, budget: Budget) -> dict:
    """INQ (Zhou et al. 2017, Alg. 1): from a pretrained float net, quantize the accumulated
    portions (50, 75, 87.5, 100%) of each layer's largest weights to powers of two, retraining
    the rest after each portion with the frozen weights held (gradients masked, values restored
    after each step)."""
    first, rest = _half(budget)
    pre = _pretrain(net, x, y, budget, first, "inq")
    layers = quantized_layers(net)
    bits = layers[0].quantizer.bits
    schedule = InqSchedule([layer.weight for layer in layers], bits)
    for layer, exponents in zip(layers, schedule.exponents, strict=True):
        layer.quantizer.exponents = exponents
    stages = len(schedule.portions) - 1  # the last portion needs no retraining
    per_stage = [rest // stages + (1 if i < rest % stages else 0) for i in range(stages)]
    handles = [layer.weight.register_hook(lambda g, i=i: g.masked_fill(schedule.frozen[i], 0))
               for i, layer in enumerate(layers)]  # fmt: skip
    losses = []
    try:
        for stage in range(len(schedule.portions)):
            schedule.advance_()
            if stage < stages and per_stage[stage] > 0:
                losses += fit_method(
                    net, x, y, per_stage[stage], budget.batch_size, budget.lr,
                    budget.seed + 1 + stage, after_step=lambda _: schedule.restore_(),
                    progress=budget.progress, label=f"inq {schedule.portion:.3g}",
                )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    for layer, frozen in zip(layers, schedule.frozen, strict=True):
        layer.quantizer.frozen = frozen.clone()
    return {"pretrain_losses": pre, "losses": losses, "frozen": schedule.frozen_counts()}


# Deep Compression's bits of shared weights (Han et al. 2016, Table 2-3): LeNet-300-100 6 bits,
# LeNet-5 8 for its convolutions and 5 for its fully connected layers; relative indices 5 bits.
DEEP_COMPRESSION_BITS = {"mlp": {"fc": 6}, "conv": {"conv": 8, "fc": 5}}
DEEP_COMPRESSION_INDEX_BITS = 5


def _fit_deep_compression(net, x, y, budget: Budget, quality: float = 1.0) -> dict:
    """Deep Compression (Han et al. 2016, Fig. 1): a float net trained for half the budget,
    pruned by magnitude (|w| > quality * std per layer), retrained with the pruned weights held
    at 0 for half of the rest, its kept weights shared by k-means (linear init; the paper's bits,
    DEEP_COMPRESSION_BITS) and the centroids (and biases) fine-tuned for the remaining epochs.
    The net's layers then compute with the shared weights."""
    convolutional = any(isinstance(m, nn.Conv2d) for m in net.modules())
    share_bits = DEEP_COMPRESSION_BITS["conv" if convolutional else "mlp"]
    first, rest = _half(budget)
    pre = _pretrain(net, x, y, budget, first, "dc")
    layers = dict((n, m) for n, m in net.named_children() if hasattr(m, "quantizer"))
    weights = {name: layer.weight for name, layer in layers.items()}
    masks = dc.magnitude_masks({n: w.detach() for n, w in weights.items()}, quality)
    hooks = dc.apply_masks_(weights, masks)
    retrain_epochs = max(1, rest // 2)
    retrain = fit_method(net, x, y, retrain_epochs, budget.batch_size, budget.lr, budget.seed + 1,
                         after_step=lambda _: hooks.reapply(), progress=budget.progress,
                         label="dc retrain")  # fmt: skip
    hooks.remove()
    shared = {}
    for name, layer in layers.items():
        bits = share_bits["conv" if layer.weight.dim() == 4 else "fc"]
        shared[name] = dc.SharedWeight.from_weight(layer.weight.detach(), masks[name], bits)
        layer.quantizer = _SharedWeights(shared[name], bits)
    centroids = [s.centroids for s in shared.values()] + [
        layer.bias for layer in layers.values() if layer.bias is not None
    ]
    finetune = fit_method(net, x, y, max(1, rest - retrain_epochs), budget.batch_size, budget.lr,
                          budget.seed + 2, parameters=centroids, progress=budget.progress,
                          label="dc finetune")  # fmt: skip
    return {"pretrain_losses": pre, "losses": retrain + finetune, "masks": masks}


class _SharedWeights(FloatWeights):
    """A layer's weights replaced by shared centroids (Deep Compression): not integer codes."""

    def __init__(self, shared: nn.Module, bits: int) -> None:
        super().__init__()
        self.shared, self.bits = shared, bits

    def forward(self, w):
        return self.shared()


def _binary_connect(stochastic: bool):
    def build(reference: nn.Sequential) -> nn.Sequential:
        return quantized_net(
            reference, lambda name, m: BinaryConnectWeights(stochastic, glorot_scale(m)),
            batch_norm=True,
        )  # fmt: skip

    return build


def _fit_stochastic_binary_connect(net, x, y, budget: Budget) -> dict:
    """Stochastic BinaryConnect trains on weights drawn by the hard sigmoid and is evaluated
    with their sign (the deterministic test-time rule, Courbariaux et al. 2015, Sec. 2.6): the
    batch norms' running statistics, gathered under the draws, are re-estimated for the sign."""
    losses = fit_method(net, x, y, budget.epochs, budget.batch_size, budget.lr, budget.seed,
                        progress=budget.progress, label="bc stochastic")  # fmt: skip
    recalibrate_batch_norm_(net, x, budget.batch_size)
    return {"losses": losses}


def _xnor_build(reference: nn.Sequential) -> nn.Sequential:
    """XNOR-Net: binary weights everywhere, batch norm after every hidden layer, and every layer
    but the first (which reads the image) an `XnorBlock` of binary inputs scaled by K; no ReLU
    (the block takes the sign of the batch-normed outputs)."""
    net = quantized_net(reference, lambda n, m: XnorWeights(), nn.Identity, batch_norm=True)
    first = True
    for name, module in list(net.named_children()):
        if hasattr(module, "quantizer"):
            if not first:
                setattr(net, name, XnorBlock(module))
            first = False
    return net


def _dorefa(w: int, a: int, g: int) -> Method:
    grad = (lambda: GradientQuantizer(g)) if g != 32 else None
    act = (lambda: DoReFaActivation(a)) if a != 32 else None
    return Method(
        f"dorefa_{w}_{a}_{g}", f"DoReFa {w}/{a}/{g}",
        "Zhou, Wu, Ni, Zhou, Wen, Zou, DoReFa-Net, arXiv 1606.06160 (2016)", (w, a, g),
        _uniform(lambda: DoReFaWeights(w), act, True, grad),
    )  # fmt: skip


# the exploration of DoReFa's (W, A, G) bits, and the two 2-bit-gradient rows of the
# paper's SVHN table (1/2/2, 2/2/2), where its claim that gradients need the most bits shows
DOREFA_TRIPLES = ((32, 32, 32), (8, 8, 8), (4, 4, 32), (2, 2, 32), (1, 2, 32), (1, 2, 4),
                  (1, 2, 2), (2, 2, 2), (1, 1, 32), (1, 1, 8))  # fmt: skip


def _pact(bits: int, penalty: float = 1e-4) -> Method:
    def fit(net, x, y, budget: Budget) -> dict:
        from .pact import pact_penalty

        losses = fit_method(net, x, y, budget.epochs, budget.batch_size, budget.lr, budget.seed,
                            penalty=lambda n: penalty * pact_penalty(n), progress=budget.progress,
                            label=f"pact{bits}")  # fmt: skip
        return {"losses": losses}

    return Method(
        f"pact_{bits}", f"PACT {bits}/{bits}",
        "Choi, Wang, Venkataramani, Chuang, Srinivasan, Gopalakrishnan, PACT, arXiv 1805.06085",
        (bits, bits, 32), _uniform(lambda: DoReFaWeights(bits), lambda: PACTActivation(bits)),
        fit, notes="weights: DoReFa's k-bit quantizer, as the paper pairs them",
    )  # fmt: skip


def _inq(bits: int) -> Method:
    return Method(
        f"inq_{bits}", f"INQ {bits}-bit",
        "Zhou, Yao, Guo, Xu, Chen, Incremental Network Quantization, ICLR 2017", (bits, 32, 32),
        _uniform(lambda: InqWeights(bits), None, False), _fit_inq, staged=True,
        notes="activations float in training; the kernels run them at 8 bits",
    )  # fmt: skip


def _registry() -> dict[str, Method]:
    bc = "Courbariaux, Bengio, David, BinaryConnect, NeurIPS 2015"
    bnn = "Hubara, Courbariaux, Soudry, El-Yaniv, Bengio, Binarized Neural Networks, NeurIPS 2016"
    xnor = "Rastegari, Ordonez, Redmon, Farhadi, XNOR-Net, ECCV 2016"
    fixed = "Courbariaux, Bengio, David, Low precision multiplications, arXiv 1412.7024 (2014)"
    methods = [
        Method("float", "float32 (no batch norm)", "the reference net of models/", (32, 32, 32),
               _uniform(FloatWeights, None, False)),
        Method("binary_connect", "BinaryConnect (det.)", bc, (1, 32, 32), _binary_connect(False)),
        Method("binary_connect_stochastic", "BinaryConnect (stoch.)", bc, (1, 32, 32),
               _binary_connect(True),
               _fit_stochastic_binary_connect,
               notes="batch norm statistics re-estimated for the test-time sign"),
        Method("bnn", "BNN", bnn, (1, 1, 32), _uniform(SignWeights, SignActivation)),
        Method("qnn_2", "QNN 2/2", "Hubara et al., Quantized Neural Networks, JMLR 2018",
               (2, 2, 32), _uniform(lambda: QNNWeights(2), lambda: QNNActivation(2)),
               notes="QNN's odd activation levels run as signed codes plus an offset folded "
                     "into the biases"),
        Method("xnor", "XNOR-Net", xnor, (1, 1, 32), _xnor_build,
               notes="first layer reads the image (real inputs); K per sample"),
        Method("bwn", "BWN", xnor, (1, 32, 32), _uniform(XnorWeights)),
        *[_dorefa(*t) for t in DOREFA_TRIPLES],
        Method("twn", "TWN", "Li, Zhang, Liu, Ternary Weight Networks, arXiv 1605.04711",
               (2, 32, 32), _uniform(TWNWeights)),
        Method("ttq", "TTQ", "Zhu, Han, Mao, Dally, Trained Ternary Quantization, ICLR 2017",
               (2, 32, 32), _uniform(TTQWeights), _fit_ttq, staged=True),
        _inq(5), _inq(3),
        Method("fixed_point", "fixed point 8/12", fixed, (8, 8, 32),
               _uniform(lambda: FixedPointWeights(8, 6, 12), lambda: FixedPointActivation(8, 4),
                        False),
               notes="propagations 8 bits, updates 12; weights f = 6, activations f = 4"),
        Method("dynamic_fixed_point", "dynamic fixed point 8/12", fixed, (8, 8, 32),
               _uniform(lambda: FixedPointWeights(8, 6, 12, dynamic=True),
                        lambda: FixedPointActivation(8, 4, dynamic=True), False),
               notes="one shared exponent per layer's weights and per activation group, moved "
                     "by the overflow rate (max 0.01%)"),
        Method("log", "log 4/3", "Miyashita, Lee, Murmann, Logarithmic Data Representation, "
               "arXiv 1603.01025", (4, 3, 32),
               _uniform(lambda: LogWeights(4), lambda: LogActivation(3, 3), False),
               notes="activations on powers of two (FSR 3): the kernels calibrate 8-bit ones"),
        _pact(2), _pact(4),
        Method("deep_compression", "Deep Compression", "Han, Mao, Dally, Deep Compression, "
               "ICLR 2016", (6, 32, 32), _uniform(FloatWeights, None, False),
               _fit_deep_compression, staged=True,
               notes="shared centroids are no uniform grid: storage by the paper's accounting "
                     "(bits 6 for LeNet-300, 8 conv / 5 fc for LeNet-5), no kernels"),
    ]  # fmt: skip
    return {m.name: m for m in methods}


METHODS: dict[str, Method] = _registry()


def method(name: str) -> Method:
    """The method called `name` (a key of METHODS)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; the methods: {sorted(METHODS)}")
    return METHODS[name]
