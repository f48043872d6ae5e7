"""Shared test set-up: every test starts from the same seeds and an empty Pyro param store."""

import numpy as np
import pyro
import pytest
import torch
from hypothesis import settings

settings.register_profile("bayesq", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("bayesq")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
