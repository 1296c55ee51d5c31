"""Cost of a model: parameters, MACs, FLOPs, BOPs and theoretical size, per input sample.

Conventions (stated in every report):

* **MACs**: multiply-accumulates of Conv2d and Linear layers only, for *one* input sample (one
  64 x 64 tile, one land-cover patch, one 64 x 64 hyperspectral cube); a convolution costs
  ``H_out * W_out * C_out * (C_in / groups) * k_h * k_w``, a linear layer ``in * out``. Bias
  additions, BatchNorm (folded), activations, pooling, resizing and element-wise ops are not
  counted (under 3 % of the MACs in our models).
* **FLOPs** = 2 x MACs (one multiply and one add).
* **BOPs** (bit operations, as in the PIC-PQ and GHOST papers): ``MACs * b_w * b_a`` per layer,
  with weight / activation widths 32 / 32 for FP32, 16 / 16 for FP16, 8 / 8 for INT8 and
  ``n`` / 8 for a GHOST-simulated ``n``-bit weight layer.
* **Theoretical size**: weights at their width (``n`` bits for a simulated layer plus its
  ``2^n`` float32 centroids), biases and every other parameter at 32 bits (16 for FP16 layers);
  BatchNorm is counted after folding (its parameters are gone).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

from ground.compress.fakequant import fold_bn, weighted_layers

BITS = {"fp32": (32, 32), "fp16": (16, 16), "int8": (8, 8)}


def layer_macs(model: nn.Module, run: Callable[[nn.Module], object]) -> Dict[str, int]:
    """MACs of each Conv2d/Linear layer for one sample.

    Parameters
    ----------
    model : torch.nn.Module
    run : callable
        ``run(model)`` runs the model on one sample (a batch of 1).

    Returns
    -------
    dict
        Layer name -> MACs (layers that do not run get 0).
    """
    macs: Dict[str, int] = {}
    hooks = []
    for name, m in weighted_layers(model):
        def hook(mod, inp, out, name=name):
            if isinstance(mod, nn.Conv2d):
                per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
                macs[name] = macs.get(name, 0) + int(out[0].numel()) * per_out
            else:
                rows = int(out[0].numel() // mod.out_features)
                macs[name] = macs.get(name, 0) + rows * mod.in_features * mod.out_features
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run(model.eval())
    finally:
        for h in hooks:
            h.remove()
    return {n: macs.get(n, 0) for n, _ in weighted_layers(model)}


def model_cost(model: nn.Module, run: Callable[[nn.Module], object], precision: Optional[Mapping[str, str]] = None,
               weight_bits: Optional[Mapping[str, int]] = None) -> Dict:
    """Parameters, MACs, FLOPs, BOPs and theoretical size of ``model`` at a precision plan.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (BN is folded here before counting parameters).
    run : callable
        ``run(model)`` runs the model on one sample.
    precision : dict, optional
        Layer -> ``"fp32"``/``"fp16"``/``"int8"`` (missing: fp32).
    weight_bits : dict, optional
        Layer -> simulated weight width ``n`` (GHOST k-means; activations 8 bits).

    Returns
    -------
    dict
        ``params``, ``macs``, ``flops``, ``bops``, ``size_bits``, ``size_bytes`` (theoretical)
        and ``layers`` (per layer: ``macs``, ``params``, ``bits_w``, ``bits_a``, ``bops``).
    """
    precision, weight_bits = dict(precision or {}), dict(weight_bits or {})
    folded = fold_bn(model)
    macs = layer_macs(folded, run)
    layers, covered = {}, set()
    size_bits = bops = 0
    for name, m in weighted_layers(folded):
        prec = precision.get(name, "fp32")
        bw, ba = BITS[prec]
        n_w = m.weight.numel()
        n_b = m.bias.numel() if m.bias is not None else 0
        if name in weight_bits:
            bw, ba = int(weight_bits[name]), 8
            size = n_w * bw + (2 ** bw) * 32 + n_b * 32
        else:
            size = n_w * bw + n_b * (16 if prec == "fp16" else 32)
        covered.update({id(m.weight), id(m.bias)})
        layer_bops = macs[name] * bw * ba
        layers[name] = {"macs": macs[name], "params": n_w + n_b, "bits_w": bw, "bits_a": ba, "bops": layer_bops}
        size_bits += size
        bops += layer_bops
    other = sum(p.numel() for p in folded.parameters() if id(p) not in covered)
    size_bits += 32 * other
    params = sum(p.numel() for p in folded.parameters())
    total_macs = sum(macs.values())
    return {"params": int(params), "macs": int(total_macs), "flops": int(2 * total_macs), "bops": int(bops),
            "size_bits": int(size_bits), "size_bytes": size_bits / 8.0, "layers": layers}


def trained_parameters(model: nn.Module) -> int:
    """Parameters of the unfolded model (what training sees, BatchNorm included)."""
    return int(sum(p.numel() for p in model.parameters()))
