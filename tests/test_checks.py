"""bayesq.checks: argument checks return the value or raise TypeError / ValueError naming it."""

import math

import pytest
import torch

from bayesq.checks import float_tensor, integer, number, positive, tensor, weight_tensor


def test_accepted_values_come_back_as_the_checked_type():
    assert number("x", 3) == 3.0 and isinstance(number("x", 3), float)
    assert positive("lr", 1e-3) == 1e-3
    assert integer("epochs", 2) == 2 and integer("warmup", 0, minimum=0) == 0
    t = torch.zeros(2)
    assert tensor("x", t) is t


@pytest.mark.parametrize(
    "check, value, error, message",
    [
        (number, True, TypeError, "x must be a number, got bool"),
        (number, "1", TypeError, "x must be a number, got str"),
        (number, math.nan, ValueError, "x must be a finite number, got nan"),
        (number, -math.inf, ValueError, "x must be a finite number"),
        (positive, 0.0, ValueError, "x must be a finite number > 0, got 0.0"),
        (positive, -2, ValueError, "x must be a finite number > 0"),
        (integer, 2.0, TypeError, "x must be an integer >= 1, got float"),
        (integer, True, TypeError, "x must be an integer >= 1, got bool"),
        (integer, 0, ValueError, "x must be an integer >= 1, got 0"),
        (tensor, [1.0], TypeError, "x must be a torch.Tensor, got list"),
        (float_tensor, torch.ones(2, dtype=torch.int64), TypeError, "floating-point tensor"),
        (float_tensor, torch.tensor([1.0, math.nan]), ValueError, "x contains NaN or infinity"),
        (weight_tensor, torch.ones(3), ValueError, "non-empty weight tensor .* got shape \\(3,\\)"),
        (weight_tensor, torch.ones(0, 3), ValueError, "non-empty weight tensor"),
        (weight_tensor, torch.full((2, 2), math.inf), ValueError, "NaN or infinity"),
        (weight_tensor, torch.ones(2, 2, dtype=torch.int8), TypeError, "floating-point"),
    ],
)
def test_bad_values_name_the_argument(check, value, error, message):
    with pytest.raises(error, match=message):
        check("x", value)
    with pytest.raises(ValueError, match="x must be an integer >= 0, got -1"):
        integer("x", -1, minimum=0)


def test_tensor_checks_pass_good_values_through():
    w = torch.randn(3, 2, 5, 5)
    assert weight_tensor("w", w) is w and float_tensor("x", w[0]) is not None
