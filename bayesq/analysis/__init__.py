"""Analysis of quantized training (Li et al., NeurIPS 2017).

* :mod:`bayesq.analysis.bounds`: the convex accuracy bounds of stochastic rounding and
  BinaryConnect (published and corrected BC floors).
* :mod:`bayesq.analysis.markov`: stochastic-rounding SGD as a Markov chain on the Delta lattice
  (exact transition matrix, stationary distribution, mixing time).
* :mod:`bayesq.analysis.problems`, :mod:`bayesq.analysis.experiments`: quadratic and logistic
  problems with their constants, and the sweeps that check the bounds against measurements.
* :mod:`bayesq.analysis.figures`: the figures, drawn from saved results.

Uses only :mod:`bayesq.quantizers` from the library; data come in as arrays.
"""

from bayesq.analysis import bounds, markov

__all__ = ["bounds", "markov"]
