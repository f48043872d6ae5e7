"""The field's quantized-training methods, the comparison points of VNQ and EBP.

Each method is a set of small quantizer functions (straight-through `torch.autograd.Function`s
where the paper passes gradients through a rounding), layer wrappers, and one way to apply it to
a reference net of `models/`; every docstring cites its paper and equation. A trained net whose
arithmetic is integer codes times scales leaves through the same road as VNQ and EBP: a
`bayesq.posterior.Posterior` whose mass sits on one level per weight, then
`bayesq.quantize.quantize_posterior` and the kernels.

The modules (one idea each):

* `binary`: BNN / QNN (Hubara et al. 2016) and XNOR-Net / BWN (Rastegari et al. 2016);
* `dorefa`: DoReFa-Net's k-bit weights, activations and gradients (Zhou et al. 2016);
* `pact`: learned activation clipping (Choi et al. 2018);
* `ternary`: TWN (Li and Liu 2016) and TTQ (Zhu et al. 2017);
* `inq`: incremental network quantization to powers of two (Zhou et al. 2017);
* `fixed_point`: fixed and dynamic fixed point training (Courbariaux et al. 2014) and the
  logarithmic representation (Miyashita et al. 2016);
* `deep_compression`, `dc_storage`, `huffman`: pruning, k-means weight sharing and Huffman
  coding with the paper's storage accounting (Han, Mao, Dally 2016).

BinaryConnect itself lives in `bayesq.binary_connect` (the EBP experiments' baseline) and
`bayesq.quantizers`. This package stands at the trainers' level of ../shared/DESIGN.md: it imports
the plain pieces and the posterior container, never the runtime or the builder.
"""
