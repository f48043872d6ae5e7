"""The Pyro SVI pieces a VNQ fit runs on: KL warm-up, a lean mean-field ELBO, one fused Adam.

* :class:`KLWeight` scales the KL term of the ELBO (the warm-up from 0 to 1 over the first epochs);
* :class:`MeanFieldELBO` is ``TraceMeanField_ELBO`` without the log densities its estimator never
  reads (the VNQ weight sites, whose KL is analytic and registered);
* :class:`JointAdam` is Adam over all the net's parameters in one fused call, the codebook scales
  ``CODEBOOK_LR_FACTOR`` times slower, with the learning rate decaying linearly to 0; its state
  (what a checkpoint stores) is checked whole before any of it is loaded.

References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 4, training setup);
Bingham et al. Pyro: Deep Universal Probabilistic Programming. JMLR 2019 (SVI, TraceMeanField_ELBO).
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch import nn

from .priors import MultiSpikeLogUniform
from .train import adam_options, linear_decay

__all__ = ["CODEBOOK_LR_FACTOR", "JointAdam", "KLWeight", "MeanFieldELBO"]

# VNQ trains the codebook scale with a learning rate 100x lower, against codebook collapse (Sec. 4).
CODEBOOK_LR_FACTOR = 0.01


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
        """Load what :meth:`get_state` returned, after checking all of it (ValueError if it is
        not a JointAdam state of this net: nothing is loaded then)."""
        if not isinstance(state, dict) or set(state) != {"optimizer", "scheduler"}:
            raise ValueError(
                "optimizer state is not a JointAdam state (a checkpoint of an older bayesq keeps "
                "one state per parameter); start the fit anew"
            )
        self._check_moments(state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _check_moments(self, stored) -> None:
        """Adam's stored moments must have their parameter's shape: torch's load_state_dict
        checks the groups but not the moments, which would fail only at the next step."""
        if not isinstance(stored, dict):
            raise ValueError(f"optimizer state is a {type(stored).__name__}, not a dict")
        moments_by_id, groups = stored.get("state"), stored.get("param_groups")
        if not isinstance(moments_by_id, dict) or not isinstance(groups, list):
            raise ValueError("optimizer state lacks its 'state' dict or 'param_groups' list")
        ids: list = []
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or not isinstance(group.get("params"), list):
                raise ValueError(f"optimizer param_groups[{i}] is not a dict with a params list")
            ids += group["params"]
        # torch numbers the parameters in group order, as this optimizer's groups hold them
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if len(ids) != len(params) or not all(type(i) is int for i in ids):
            raise ValueError(
                f"optimizer state covers {len(ids)} parameters, the net has {len(params)}"
            )
        by_id = dict(zip(ids, params, strict=True))
        for key, moments in moments_by_id.items():
            if key not in by_id or not isinstance(moments, dict):
                raise ValueError(f"optimizer state of an unknown parameter {key!r}")
            shape = by_id[key].shape
            for name in ("exp_avg", "exp_avg_sq"):
                moment = moments.get(name)
                if not isinstance(moment, torch.Tensor) or moment.shape != shape:
                    raise ValueError(
                        f"optimizer {name} of parameter {key} is not a tensor of shape "
                        f"{tuple(shape)}"
                    )
            step = moments.get("step")
            if not isinstance(step, torch.Tensor) or step.numel() != 1:
                raise ValueError(f"optimizer step of parameter {key} is not a scalar")
