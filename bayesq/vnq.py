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
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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

from .checkpoint import CheckpointError, check_config, load_checkpoint, require, save_checkpoint
from .nn import LocalReparameterization, VNQConv2d, VNQLayer, VNQLinear
from .priors import MultiSpikeLogUniform
from .train import adam_options, keep_freed_memory, linear_decay

__all__ = ["VNQ", "JointAdam", "KLWeight", "to_vnq_", "vnq_layers"]

# VNQ trains the codebook scale with a learning rate 100x lower, against codebook collapse (Sec. 4).
CODEBOOK_LR_FACTOR = 0.01
_instance_ids = itertools.count()
# What a VNQ checkpoint holds (inside the container of bayesq.checkpoint); version 2 added the
# configuration and every RNG of the fit.
CHECKPOINT_KIND = "bayesq.vnq.VNQ.fit"
CHECKPOINT_VERSION = 2


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

        With `checkpoint` set, the state is saved (atomically) after every epoch and, if the file
        exists, training resumes after its last completed epoch. The state is everything the rest
        of the fit depends on: the net, the optimizer and its schedule, the epoch and history, and
        every random number generator the fit draws from (torch's, which also seeds the kernels'
        weight noise, Python's and numpy's, which Pyro seeds, and the loader's shuffle
        generator), so a fit killed at any epoch and resumed ends with the same parameters, bit
        for bit, as the fit that was never interrupted (on the same machine and thread count).

        A checkpoint records the configuration it was made with (:meth:`fit_config`: the net's
        layers and shapes, codebook sizes, data and batch sizes, epochs, learning rate, warm-up,
        seeds); resuming with a different one raises
        :class:`~bayesq.checkpoint.CheckpointError` naming the field and both values, and so do
        malformed contents (counters out of range, missing entries, wrong types).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        if isinstance(kl_warmup_epochs, bool) or not isinstance(kl_warmup_epochs, int):
            raise ValueError(f"kl_warmup_epochs must be an integer, got {kl_warmup_epochs!r}")
        if kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {kl_warmup_epochs}")
        if isinstance(lr, bool) or not (
            isinstance(lr, int | float) and math.isfinite(lr) and lr > 0
        ):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        keep_freed_memory()
        steps_per_epoch = len(loader)
        if steps_per_epoch < 1:
            raise ValueError("loader yields no batches")
        config = self.fit_config(loader, epochs, lr, kl_warmup_epochs)
        optimizer = JointAdam(self.net, lr, epochs * steps_per_epoch)
        pyro.set_rng_seed(self.seed)
        if checkpoint is not None and Path(checkpoint).exists():
            self._restore(load_checkpoint(checkpoint), optimizer, config, loader, checkpoint)
        svi = SVI(
            LocalReparameterization()(self.kl_weight(self.model)),
            LocalReparameterization()(self.kl_weight(self.guide)),
            optimizer,
            MeanFieldELBO(),
        )
        self.net.train()
        # One checked step (shapes, supports and model/guide match), drawing nothing the fit
        # itself will draw: the RNGs go back to where they were, so that a fit resumed from a
        # checkpoint (which repeats this check) continues the very same random streams.
        rng = _rng_state(loader)
        with pyro.validation_enabled(True):
            svi.evaluate_loss(*next(iter(loader)))
        _set_rng_state(rng, loader)
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
                save_checkpoint(checkpoint, self._state(optimizer, config, loader))
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

    def fit_config(self, loader, epochs: int, lr: float, kl_warmup_epochs: int) -> dict[str, Any]:
        """The configuration a checkpoint of this fit records and a resumed fit must match.

        architecture: (qualified name, class, ``extra_repr``) of every submodule (so layer sizes,
        strides, padding and codebook sizes); parameters: name, shape and dtype of every entry of
        the state dict; num_levels: the codebook size of each VNQ layer; the data (num_data, the
        loader's dataset size, batch size, batches per epoch, the seed its shuffle generator was
        made with) and the schedule (epochs, lr, kl_warmup_epochs, seed).
        """
        generator = getattr(loader, "generator", None)
        dataset = getattr(loader, "dataset", None)
        return {
            "num_levels": {name: int(layer.num_levels) for name, layer in self.layers.items()},
            "architecture": [
                [name, type(module).__name__, module.extra_repr()]
                for name, module in self.net.named_modules()
                if name
            ],
            "parameters": [
                [name, list(tensor.shape), str(tensor.dtype)]
                for name, tensor in self.net.state_dict().items()
            ],
            "num_data": self.num_data,
            "dataset_size": len(dataset) if hasattr(dataset, "__len__") else None,
            "batch_size": getattr(loader, "batch_size", None),
            "steps_per_epoch": len(loader),
            "epochs": epochs,
            "lr": float(lr),
            "kl_warmup_epochs": kl_warmup_epochs,
            "seed": self.seed,
            "loader_seed": generator.initial_seed() if generator is not None else None,
        }

    def _state(self, optimizer, config: dict, loader) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "version": CHECKPOINT_VERSION,
            "config": config,
            "net": self.net.state_dict(),
            "optimizer": optimizer.get_state(),
            "epochs_done": self.epochs_done,
            "history": self.history,
            "rng": _rng_state(loader),
        }

    def _restore(self, state: dict, optimizer, config: dict, loader, path) -> None:
        """Load a checkpoint's state after checking that it belongs to this fit (configuration)
        and is well formed (counters, history, tensors); raises CheckpointError naming `path`."""
        kind = state.get("kind") if isinstance(state, dict) else None
        if kind != CHECKPOINT_KIND:
            raise CheckpointError(
                f"{path}: not a checkpoint of VNQ.fit (kind {kind!r}; checkpoints of bayesq "
                "before version 2 record no configuration): start from a new checkpoint path"
            )
        version = require(state, "version", int, path)
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: VNQ checkpoint version {version}, expected {CHECKPOINT_VERSION}"
            )
        check_config(path, require(state, "config", dict, path), config)
        epochs = config["epochs"]
        epochs_done = require(state, "epochs_done", int, path)
        if not 0 <= epochs_done <= epochs:
            raise CheckpointError(
                f"{path}: epochs_done = {epochs_done} lies outside 0..{epochs} (epochs)"
            )
        history = _checked_history(require(state, "history", list, path), epochs_done, path)
        net_state = require(state, "net", dict, path)
        _check_net_state(self.net, net_state, path)
        opt_state = require(state, "optimizer", dict, path)
        _check_optimizer_state(opt_state, self.net, path)
        self.net.load_state_dict(net_state)  # checked: nothing is loaded from a bad checkpoint
        try:
            optimizer.set_state(opt_state)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not fit this net ({err})") from err
        _set_rng_state(require(state, "rng", dict, path), loader, path)
        self.epochs_done = epochs_done
        self.history = history

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


# --- checkpoint contents -----------------------------------------------------------------------
_HISTORY_FIELDS = ("loss", "kl", "pruned")


def _checked_history(history: list, epochs_done: int, path) -> list[dict[str, float]]:
    """A copy of a stored history after checking it: one record per epoch done, in order."""
    if len(history) != epochs_done:
        raise CheckpointError(
            f"{path}: history holds {len(history)} epochs, epochs_done = {epochs_done}"
        )
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: history[{i}] is a {type(record).__name__}, not a dict")
        where = f"history[{i}]."
        if require(record, "epoch", int, path, where) != i + 1:
            raise CheckpointError(
                f"{path}: history[{i}] is of epoch {record['epoch']}, not {i + 1}"
            )
        for field in _HISTORY_FIELDS:
            require(record, field, (float, int), path, where)
    return [dict(record) for record in history]


def _check_net_state(net: nn.Module, stored: dict, path) -> None:
    """A stored state dict must match the names, shapes and dtypes of `net`'s exactly."""
    expected = net.state_dict()
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise CheckpointError(
            f"{path}: net state does not match the net (missing {missing[:5]}, extra {extra[:5]})"
        )
    for name, tensor in stored.items():
        target = expected[name]
        if not isinstance(tensor, torch.Tensor) or (tensor.shape, tensor.dtype) != (
            target.shape,
            target.dtype,
        ):
            found = (
                f"{tensor.dtype} {tuple(tensor.shape)}"
                if isinstance(tensor, torch.Tensor)
                else type(tensor).__name__
            )
            raise CheckpointError(
                f"{path}: net entry {name!r} is {found}, expected {target.dtype} "
                f"{tuple(target.shape)}"
            )


def _check_optimizer_state(state: dict, net: nn.Module, path) -> None:
    """A JointAdam state for `net`: Adam's moments must have their parameter's shape (torch's
    load_state_dict checks the groups but not the moments, which would fail at the next step)."""
    inner = require(state, "optimizer", dict, path, "optimizer.")
    moments_by_id = require(inner, "state", dict, path, "optimizer.optimizer.")
    groups = require(inner, "param_groups", list, path, "optimizer.optimizer.")
    ids: list = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise CheckpointError(f"{path}: optimizer param_groups[{i}] is not a dict")
        ids += require(group, "params", list, path, f"optimizer param_groups[{i}].")
    # JointAdam's groups hold the net's parameters, the codebook scales last; torch numbers
    # them in group order
    named = list(net.named_parameters())
    params = [p for name, p in named if not name.endswith("log_codebook_scale")]
    params += [p for name, p in named if name.endswith("log_codebook_scale")]
    if len(ids) != len(params) or not all(type(i) is int for i in ids):
        raise CheckpointError(
            f"{path}: optimizer state covers {len(ids)} parameters, the net has {len(params)}"
        )
    by_id = dict(zip(ids, params, strict=True))
    for key, moments in moments_by_id.items():
        if key not in by_id or not isinstance(moments, dict):
            raise CheckpointError(f"{path}: optimizer state of an unknown parameter {key!r}")
        shape = by_id[key].shape
        for name in ("exp_avg", "exp_avg_sq"):
            moment = moments.get(name)
            if not isinstance(moment, torch.Tensor) or moment.shape != shape:
                raise CheckpointError(
                    f"{path}: optimizer {name} of parameter {key} is not a tensor of shape "
                    f"{tuple(shape)}"
                )
        step = moments.get("step")
        if not isinstance(step, torch.Tensor) or step.numel() != 1:
            raise CheckpointError(f"{path}: optimizer step of parameter {key} is not a scalar")


def _loader_generators(loader) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader shuffles with (its own and its sampler's)."""
    found = []
    for owner in (loader, getattr(loader, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _rng_state(loader) -> dict:
    """Every random number generator a fit draws from: torch's global one (weight noise of the
    kernels, Pyro's sampling and subsampling, a loader without a generator of its own), Python's
    and numpy's (seeded by pyro.set_rng_seed), and the loader's shuffle generator(s)."""
    version, words, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "words": list(words), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict, loader, path=None) -> None:
    """Restore what _rng_state saved; a malformed state raises CheckpointError naming `path`."""
    try:
        generators = _loader_generators(loader)
        loader_states = state["loader"]
        if len(loader_states) != len(generators):
            raise ValueError(
                f"{len(loader_states)} loader generator state(s) for {len(generators)} generator(s)"
            )
        py = state["python"]
        numpy_state = state["numpy"]
        key = numpy_state["key"]
        if not isinstance(key, torch.Tensor) or key.shape != (624,):
            raise ValueError("numpy state key is not 624 words")
        torch.set_rng_state(state["torch"])
        random.setstate((py["version"], tuple(py["words"]), py["gauss"]))
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": key.numpy().astype(np.uint32), "pos": int(numpy_state["pos"])},
                "has_gauss": int(numpy_state["has_gauss"]),
                "gauss": float(numpy_state["gauss"]),
            }
        )
        for generator, saved in zip(generators, loader_states, strict=True):
            generator.set_state(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        if path is None:
            raise
        raise CheckpointError(f"{path}: malformed random number generator state ({err})") from err
