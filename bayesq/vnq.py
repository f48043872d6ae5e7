"""Variational Network Quantization with Pyro: turn a net into VNQ layers, fit by SVI, predict.

:func:`to_vnq_` walks a deterministic net and replaces its ``nn.Linear`` / ``nn.Conv2d`` modules by
VNQ layers whose posterior means start at the trained weights (VNQ starts from a pretrained net).
:class:`VNQ` is the fit/predict object on top:

* ``model(x, y)``: every VNQ layer's weight is a sample site with the multi-spike log-uniform prior;
  the labels are a categorical likelihood in a subsampled plate over the training set;
* ``guide(x, y)``: the factorized Gaussian N(theta, sigma^2) at every weight site;
* ``fit``: ``pyro.infer.SVI`` with ``TraceMeanField_ELBO`` (which takes the registered analytic KL),
  under :class:`~bayesq.nn.LocalReparameterization`, with the KL scaled from 0 to 1 over the first
  epochs (warm-up) and Adam whose learning rate decays linearly to 0 (codebook scales 100x slower);
* ``predict_proba``: the posterior-mean net, or ``pyro.infer.Predictive`` posterior predictive
  samples averaged.

References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 4, training setup).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from pyro.infer.autoguide.initialization import InitMessenger, init_to_sample, init_to_value
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .nn import LocalReparameterization, VNQConv2d, VNQLayer, VNQLinear
from .priors import MultiSpikeLogUniform
from .train import adam_options, keep_freed_memory, linear_decay

__all__ = ["VNQ", "JointAdam", "KLWeight", "to_vnq_", "vnq_layers"]

# VNQ trains the codebook scale with a learning rate 100x lower, against codebook collapse (Sec. 4).
CODEBOOK_LR_FACTOR = 0.01
_instance_ids = itertools.count()


def vnq_layers(net: nn.Module) -> Iterator[tuple[str, VNQLayer]]:
    """(qualified name, layer) for every VNQ layer of `net`, in module order."""
    for name, module in net.named_modules():
        if isinstance(module, VNQLayer):
            yield name, module


def to_vnq_(
    net: nn.Module,
    num_levels: int = 3,
    zero_share: float | None = None,
    exclude: tuple[str, ...] = (),
) -> nn.Module:
    """Replace, in place, each nn.Linear and nn.Conv2d of `net` (except names in `exclude`) by a
    VNQ layer with theta = the trained weight, log sigma^2 = -8, and r fitted to theta (see
    VNQLayer.init_codebook_scale_ for `zero_share`). Returns net.
    """
    for parent_name, parent in list(net.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if qualified in exclude:
                continue
            if isinstance(child, nn.Linear):
                layer = VNQLinear(
                    child.in_features, child.out_features, child.bias is not None, num_levels
                )
            elif isinstance(child, nn.Conv2d):
                if child.groups != 1 or child.dilation != (1, 1) or child.padding_mode != "zeros":
                    raise ValueError(
                        f"{qualified}: only groups=1, dilation=1, zero padding supported"
                    )
                layer = VNQConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.bias is not None,
                    num_levels,
                )
            else:
                continue
            layer.load_deterministic_(child.weight.detach(), child.bias, zero_share)
            setattr(parent, child_name, layer)
    return net


class KLWeight(Messenger):
    """Scales the log density of every latent sample site by `weight` (KL warm-up).

    Under TraceMeanField_ELBO the latent sites contribute -KL(q || p) times their scale, so this
    multiplies the KL term of the ELBO by `weight` and leaves the likelihood alone.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def _pyro_sample(self, msg) -> None:
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.weight


def _has_analytic_kl(site) -> bool:
    fn = site["fn"]
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return isinstance(fn, MultiSpikeLogUniform)


class MeanFieldELBO(TraceMeanField_ELBO):
    """TraceMeanField_ELBO that evaluates only the log densities its estimator reads.

    Pyro's importance trace computes log p(w) and log q(w) at every site, but for a latent site
    whose KL is analytic (the VNQ weight sites) the mean-field estimator reads neither: the ELBO is
    the likelihood minus the registered KL. On LeNet-5 those two unused passes over 431k weights
    cost about 12% of an SVI step, so they are skipped here; every other site is treated as in
    TraceMeanField_ELBO, whose loss this equals exactly.
    """

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(site_filter=lambda _, site: not _has_analytic_kl(site))
        latent = [
            site
            for site in model_trace.nodes.values()
            if site["type"] == "sample" and not site["is_observed"]
        ]
        if is_validation_enabled() or not all(_has_analytic_kl(site) for site in latent):
            # read by the reparameterization check and by the fallback for sites without a KL
            guide_trace.compute_score_parts()
        return model_trace, guide_trace


class JointAdam(pyro.optim.PyroOptim):
    """Adam over all parameters of a VNQ net in one fused call, with VNQ's schedule, for SVI.

    Pyro's optimizer wrappers keep one torch optimizer (and one LR scheduler) per parameter
    tensor and step them one after the other: 16 Adam calls per step on LeNet-5, about 1.5 ms of
    a 70 ms step. This wrapper holds one ``torch.optim.Adam`` (fused where torch has it) with two
    parameter groups, the codebook scales at ``CODEBOOK_LR_FACTOR`` times the learning rate, and
    a ``LambdaLR`` that decays the rate linearly to 0 over ``total_steps`` (``step()``, once per
    SVI step). The update of each parameter is the same Adam update.

    SVI calls it with the parameters of the step's trace: those must be the net's own.
    """

    def __init__(self, net: nn.Module, lr: float, total_steps: int):
        super().__init__(torch.optim.Adam, {})
        named = list(net.named_parameters())
        slow = [p for name, p in named if name.endswith("log_codebook_scale")]
        fast = [p for name, p in named if not name.endswith("log_codebook_scale")]
        self.optimizer = torch.optim.Adam(
            [{"params": fast, "lr": lr}, {"params": slow, "lr": lr * CODEBOOK_LR_FACTOR}],
            **adam_options(),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_decay(total_steps)
        )
        self._param_ids = {id(p) for _, p in named}

    def __call__(self, params, *args, **kwargs) -> None:
        foreign = [p for p in params if id(p) not in self._param_ids]
        if foreign:
            raise ValueError(
                f"JointAdam got {len(foreign)} parameter(s) that are not the net's own; "
                "a model or guide with extra pyro.param sites needs pyro.optim.Adam"
            )
        self.optimizer.step()

    def step(self) -> None:
        """Advance the learning-rate schedule by one SVI step."""
        self.scheduler.step()

    def get_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def set_state(self, state: dict) -> None:
        if set(state) != {"optimizer", "scheduler"}:
            raise ValueError(
                "optimizer state is not a JointAdam state (a checkpoint of an older bayesq keeps "
                "one state per parameter); start the fit anew"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class VNQ:
    """Fit a VNQ posterior for a classifier `net` (containing VNQ layers) with Pyro's SVI.

    Args:
        net: a classifier returning logits (N, classes); see :func:`to_vnq_`.
        num_data: size of the training set (the likelihood is scaled by num_data / batch size).
        seed: seeds Pyro, torch and the weight noise.

    >>> from torch import nn
    >>> net = to_vnq_(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    >>> vnq = VNQ(net, num_data=10)
    >>> [name for name, _ in vnq_layers(net)]
    ['1']
    """

    def __init__(self, net: nn.Module, num_data: int, seed: int = 0):
        self.net = net
        self.layers = dict(vnq_layers(net))
        if not self.layers:
            raise ValueError("net has no VNQ layers; convert it with bayesq.vnq.to_vnq_ first")
        if num_data < 1:
            raise ValueError(f"num_data must be >= 1, got {num_data}")
        self.num_data = int(num_data)
        self.seed = seed
        # A name of our own in Pyro's global param store, so two VNQ objects never share params.
        self.pyro_name = f"bayesq_vnq_{next(_instance_ids)}"
        for name, layer in self.layers.items():
            layer.site_name = f"{name}.weight"
        self.kl_weight = KLWeight(1.0)
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []

    # --- the probabilistic program -----------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # The guide registers the net's parameters with Pyro; SVI and Predictive run both, so the
        # model does not repeat it (it would double the per-step bookkeeping for nothing).
        logits = self.net(x)
        with pyro.plate("data", self.num_data, subsample_size=x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module(self.pyro_name, self.net)
        for layer in self.layers.values():
            pyro.sample(
                layer.site_name,
                layer.posterior().to_event(layer.theta.dim()),
                infer={"vnq_weight": True},
            )

    def kl(self) -> torch.Tensor:
        """Total approximate KL(q || p) over all VNQ layers (nats)."""
        return sum(layer.kl() for layer in self.layers.values())

    # --- training ----------------------------------------------------------------------------
    def fit(
        self,
        loader,
        epochs: int,
        lr: float = 1e-3,
        kl_warmup_epochs: int = 15,
        checkpoint: str | Path | None = None,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Run SVI for `epochs` epochs over `loader` (batches of (x, y)); returns per-epoch history.

        With `checkpoint` set, the state (net, optimizer, epoch, history, RNG) is saved after
        every epoch and, if the file exists, training resumes after its last completed epoch.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        keep_freed_memory()
        steps_per_epoch = len(loader)
        optimizer = JointAdam(self.net, lr, epochs * steps_per_epoch)
        pyro.set_rng_seed(self.seed)
        if checkpoint is not None and Path(checkpoint).exists():
            self._restore(load_checkpoint(checkpoint), optimizer)
        svi = SVI(
            LocalReparameterization()(self.kl_weight(self.model)),
            LocalReparameterization()(self.kl_weight(self.guide)),
            optimizer,
            MeanFieldELBO(),
        )
        self.net.train()
        with pyro.validation_enabled(True):  # shapes, supports and model/guide match, once
            svi.evaluate_loss(*next(iter(loader)))
        bar = tqdm(
            range(self.epochs_done, epochs),
            desc="VNQ",
            disable=not progress,
            initial=self.epochs_done,
            total=epochs,
        )
        for epoch in bar:
            with pyro.validation_enabled(False):  # checked above; per step it costs ~4%
                total_loss, count = self._epoch(svi, optimizer, loader, epoch, kl_warmup_epochs)
            with torch.no_grad():
                kl = float(self.kl())
            record = {"epoch": epoch + 1, "loss": total_loss / count, "kl": kl}
            record["pruned"] = self.pruned_share()
            self.history.append(record)
            self.epochs_done = epoch + 1
            bar.set_postfix(loss=f"{record['loss']:.1f}", pruned=f"{record['pruned']:.2f}")
            if checkpoint is not None:
                save_checkpoint(checkpoint, self._state(optimizer))
        self.net.eval()
        return self.history

    def _epoch(self, svi, optimizer, loader, epoch: int, kl_warmup_epochs: int):
        total_loss, count = 0.0, 0
        steps_per_epoch = len(loader)
        for step, (x, y) in enumerate(loader):
            if kl_warmup_epochs:
                self.kl_weight.weight = min(
                    1.0, (epoch + step / steps_per_epoch) / kl_warmup_epochs
                )
            else:
                self.kl_weight.weight = 1.0
            total_loss += svi.step(x, y)
            optimizer.step()
            count += 1
        return total_loss, count

    @torch.no_grad()
    def pruned_share(self) -> float:
        """Share of all VNQ weights whose log alpha passes their layer's pruning threshold."""
        pruned = sum(
            int((la.log_alpha >= la.log_alpha_threshold).sum()) for la in self.layers.values()
        )
        return pruned / sum(la.theta.numel() for la in self.layers.values())

    def _state(self, optimizer) -> dict:
        return {
            "net": self.net.state_dict(),
            "optimizer": optimizer.get_state(),
            "epochs_done": self.epochs_done,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self, state: dict, optimizer) -> None:
        self.net.load_state_dict(state["net"])
        optimizer.set_state(state["optimizer"])
        self.epochs_done = int(state["epochs_done"])
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])

    # --- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(
        self, x: torch.Tensor, num_samples: int = 0, batch_size: int = 1024
    ) -> torch.Tensor:
        """Class probabilities (N, classes).

        num_samples = 0: softmax of the net with its current eval weights (posterior mean, or the
        quantized weights if the layers were switched). num_samples > 0: the posterior predictive,
        the mean of softmax(logits) over weight samples drawn from the guide by Predictive.
        """
        self.net.eval()
        if num_samples == 0:
            return torch.cat(
                [self.net(x[i : i + batch_size]).softmax(-1) for i in range(0, len(x), batch_size)]
            )
        # Predictive first runs the model once unconditioned to learn site shapes (init_to_sample);
        # the improper prior cannot be sampled, so that run starts the weight sites at theta.
        means = {layer.site_name: layer.theta.detach() for layer in self.layers.values()}
        model = InitMessenger(init_to_value(values=means, fallback=init_to_sample))(self.model)
        predictive = Predictive(
            model, guide=self.guide, num_samples=num_samples, return_sites=("_RETURN",)
        )
        chunks = []
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size]
            # Predictive pads sample shapes with singleton plate dims: (S, 1, B, C) -> (S, B, C)
            logits = predictive(batch)["_RETURN"].reshape(num_samples, len(batch), -1)
            chunks.append(logits.softmax(-1).mean(0))
        return torch.cat(chunks)
