"""The Bayesian methods on the baselines' harness (`experiments.baselines`): the same data,
architecture, seeds and epoch budget as the field's methods, measured by the same code.

  * ``vnq``: Variational Network Quantization (Achterhold et al. 2018) with the ternary
    multi-spike prior: a float net for half the epochs, then the VNQ posterior from it for the
    rest (`bayesq.vnq.VNQ`, KL warm-up over a third of them); the discrete net snaps each weight
    to its codebook level, pruned by log alpha (`quantize_posterior`'s own levels);
  * ``sparse_vd``: Sparse VD (Molchanov et al. 2017, VNQ with one spike at 0), the same budget;
    each row's width from its posterior variance by bayesq's bit rule (`bayesq.bits.row_widths`);
  * ``ebp``: expectation backpropagation over binary weights (Soudry et al. 2014) on centred
    inputs with sign units, for MLPs only (LeNet-300-100's widths); its EBP-D net.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

import models
from bayesq.bit_rules import BitRule
from bayesq.bits import row_widths
from bayesq.ebp import EBPNet
from bayesq.posterior import PruningRule
from bayesq.quantize import quantize_posterior
from bayesq.runtime import DiscreteNet
from bayesq.train import accuracy, fit_deterministic
from bayesq.vnq import VNQ, to_vnq_
from experiments.runs import arch_kwargs

BAYES_METHODS = {
    "vnq": ("VNQ ternary", "Achterhold, Koehler, Schmeink, Genewein, VNQ, ICLR 2018", (2, 8, 32)),
    "sparse_vd": ("Sparse VD + bit rule", "Molchanov, Ashukha, Vetrov, Sparse VD, ICML 2017; "
                  "widths by bayesq.bits", (8, 8, 32)),
    "ebp": ("EBP binary", "Soudry, Hubara, Meir, Expectation Backpropagation, NeurIPS 2014",
            (1, 1, 32)),
}  # fmt: skip


def _vnq(arch, data, budget, calibration, levels: int):
    torch.manual_seed(budget.seed)
    net = models.build(arch, **arch_kwargs(arch, data.image_shape))
    first = max(1, budget.epochs // 2)
    rest = max(1, budget.epochs - first)
    loader, _ = data.loaders(budget.batch_size, seed=budget.seed)
    losses = fit_deterministic(net, loader, first, lr=budget.lr, seed=budget.seed,
                               progress=budget.progress)  # fmt: skip
    vnq_net = to_vnq_(copy.deepcopy(net), num_levels=levels)
    vnq = VNQ(vnq_net, num_data=len(data.y_train), seed=budget.seed)
    vnq_loader, _ = data.loaders(budget.batch_size, seed=budget.seed)
    history = vnq.fit(vnq_loader, rest, lr=budget.lr, kl_warmup_epochs=max(1, rest // 3),
                      progress=budget.progress)  # fmt: skip
    posterior = vnq.posterior(data.image_shape)
    losses = losses + [h["loss"] for h in history]
    if levels == 3:
        discrete = quantize_posterior(posterior, calibration, act_bits=8)
    else:  # Sparse VD: widths from the posterior variance, pruned by log alpha
        rule = BitRule(pruning=PruningRule())
        widths = {n: row_widths(layer, rule) for n, layer in posterior.layers.items()}
        discrete = quantize_posterior(posterior, calibration, widths=widths, act_bits=8, rule=rule)
    mean_accuracy = accuracy(vnq.predict_proba, data.x_test, data.y_test)  # posterior means
    return losses, discrete, mean_accuracy


def _ebp(arch, data, budget, calibration):
    if arch not in ("lenet300", "mlp"):
        return None, None, "EBP here trains MLPs only"
    x = data.x_train.flatten(1)
    shift = x.mean(0)
    hidden = (300, 100) if arch == "lenet300" else (512, 256)
    sizes = [x.shape[1], *hidden, data.num_classes]
    net = EBPNet(sizes, "binary", seed=budget.seed).fit(
        x - shift, data.y_train, epochs=budget.epochs
    )
    flat = quantize_posterior(net.posterior(), calibration.flatten(1), act_bits=8,
                              input_shift=shift)  # fmt: skip
    discrete = DiscreteNet([nn.Flatten(), *flat.ops])  # reads images like the other nets
    return (
        discrete,
        net.accuracy(data.x_test.flatten(1) - shift, data.y_test, "deterministic"),
        None,
    )


def run_bayes(name: str, arch: str, data, budget, calibration) -> tuple[dict, object]:
    """One run of a Bayesian method: its measurements (as `run_method`'s) and discrete net."""
    label, paper, bits = BAYES_METHODS[name]
    t0 = time.perf_counter()
    result = {"method": name, "label": label, "paper": paper, "bits": list(bits),
              "staged": name != "ebp", "seed": budget.seed, "notes": ""}  # fmt: skip
    if name == "ebp":
        discrete, acc, why_not = _ebp(arch, data, budget, calibration)
        result.update(losses=[], accuracy=acc)
        if discrete is None:
            result.update(kernels=None, kernels_why_not=why_not, accuracy=None)
    else:
        losses, discrete, mean_acc = _vnq(
            arch, data, budget, calibration, 3 if name == "vnq" else 1
        )
        result.update(losses=losses, accuracy_posterior_mean=mean_acc)
        result["accuracy"] = accuracy(discrete, data.x_test, data.y_test)  # as it runs
    result["train_seconds"] = time.perf_counter() - t0
    result["bops_nominal"] = None  # the discrete net's own BOPs count (measure_discrete)
    return result, discrete
