"""Variational Network Quantization with Pyro: turn a net into VNQ layers, fit by SVI, predict.

:func:`to_vnq_` walks a deterministic net and replaces its ``nn.Linear`` / ``nn.Conv2d`` modules by
VNQ layers whose posterior means start at the trained weights (VNQ starts from a pretrained net).
:class:`VNQ` is the fit/predict object on top:

* ``model(x, y)``: every VNQ layer's weight is a sample site with the multi-spike log-uniform prior;
  the labels are a categorical likelihood in a subsampled plate over the training set;
* ``guide(x, y)``: the factorized Gaussian N(theta, sigma^2) at every weight site;
* ``fit``: ``pyro.infer.SVI`` with ``TraceMeanField_ELBO`` (which takes the registered analytic KL),
  under :class:`~bayesq.nn.LocalReparameterization`, with the KL scaled from 0 to 1 over the first
  epochs (warm-up) and Adam whose learning rate decays linearly to 0 (codebook scales 100x slower)
  (those three pieces: ``bayesq.svi``); resumable from a checkpoint after any epoch;
* ``predict_proba``: the posterior-mean net, or ``pyro.infer.Predictive`` posterior predictive
  samples averaged.

References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 4, training setup).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive
from pyro.infer.autoguide.initialization import InitMessenger, init_to_sample, init_to_value
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    check_config,
    check_state_dict,
    load_checkpoint,
    require,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from .checks import integer, positive
from .nn import LocalReparameterization, VNQConv2d, VNQLayer, VNQLinear, posterior_of
from .posterior import Posterior
from .svi import JointAdam, KLWeight, MeanFieldELBO
from .train import keep_freed_memory

__all__ = ["VNQ", "to_vnq_", "vnq_layers"]

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
        integer("epochs", epochs)
        integer("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
        positive("lr", lr)
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
        rng = rng_states(loader)
        with pyro.validation_enabled(True):
            svi.evaluate_loss(*next(iter(loader)))
        restore_rng_states(rng, loader)
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
            int(la.pruning.prunes_log_alpha(la.log_alpha).sum()) for la in self.layers.values()
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
            "rng": rng_states(loader),
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
        check_state_dict(path, net_state, self.net.state_dict())
        optimizer_state = require(state, "optimizer", dict, path)
        try:  # checks the whole optimizer state before it loads any of it
            optimizer.set_state(optimizer_state)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not fit this net ({err})") from err
        self.net.load_state_dict(net_state)  # checked: nothing is loaded from a bad checkpoint
        restore_rng_states(require(state, "rng", dict, path), loader, path)
        self.epochs_done = epochs_done
        self.history = history

    def posterior(self, input_shape: tuple[int, ...]) -> Posterior:
        """The fitted Gaussian posterior (a `bayesq.posterior.Posterior`), as `EBPNet.posterior()`
        gives the discrete one: what `bayesq.quantize.quantize_posterior`, `bayesq.bits` and
        `Posterior.save` take. input_shape: one input sample's shape, e.g. (1, 28, 28)."""
        return posterior_of(self.net, input_shape)

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
