"""BatchNorm folding and symmetric fake quantization that matches ONNX Q/DQ bit for bit.

Numerics (the same as ONNX ``QuantizeLinear``/``DequantizeLinear`` with zero point 0):

* activations, per tensor: ``q = clamp(round_half_even(x / s), -128, 127)``, ``x' = q * s``,
  with ``s = amax / 127`` from a calibrator (:mod:`ground.compress.ptq`) or QAT;
* weights, per output channel ``c``: ``s_c = max|w_c| / 127`` (recomputed from the current
  weights, so QAT and export agree), ``w' = round(w / s_c) * s_c``;
* FP16 layers: weights rounded to float16 (activations stay float32: what ONNX Runtime on a CPU
  runs for such a layer; TensorRT also runs its activations in FP16).

In training the rounding uses a straight-through estimator, and the clamp passes gradients only
inside the representable range. Only ``Conv2d`` layers are quantized (they hold almost all the
arithmetic); ``Linear`` layers stay in float, as in :mod:`ground.quantize`.

Simulation swaps the class of each ``nn.Conv2d`` to :class:`QuantConv2d` in a deep copy, so
module names, parameters and ``state_dict`` keys stay those of the float model; the ONNX
writer (:mod:`ground.compress.qdq`) finds each layer's weight by that name.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

QMIN, QMAX = -128, 127
#: Precisions a deployable layer may have.
PRECISIONS = ("fp32", "fp16", "int8")


def weighted_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv2d and Linear in registration order (the precision map's layers)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def conv_layers(model: nn.Module) -> List[str]:
    """Names of the Conv2d layers (the ones that get INT8)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def fold_bn(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every ``Conv2d -> BatchNorm2d`` pair in a Sequential folded.

    The BatchNorm becomes ``nn.Identity`` and the convolution gets
    ``w * gamma / sqrt(var + eps)`` and bias ``(b - mean) * gamma / sqrt(var + eps) + beta``.
    Idempotent; the copy is in eval mode.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
    """
    out = copy.deepcopy(model).eval()
    for seq in [m for m in out.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                with torch.no_grad():
                    k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.weight.mul_(k.reshape(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - bn.running_mean) * k + bn.bias)
                seq._modules[b] = nn.Identity()
    return out


def fake_quant(x: torch.Tensor, scale, ste: bool = False) -> torch.Tensor:
    """Symmetric INT8 quantize-dequantize of ``x`` with ``scale`` (scalar or broadcastable).

    Parameters
    ----------
    x : torch.Tensor
    scale : float or torch.Tensor
        Positive step size(s).
    ste : bool
        Straight-through gradient (inside the clamp range) instead of none.
    """
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if not ste:
        return torch.clamp(torch.round(x / scale), QMIN, QMAX) * scale
    xc = torch.maximum(torch.minimum(x, QMAX * scale), QMIN * scale)
    return xc + (torch.round(xc / scale) * scale - xc).detach()


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales ``max|w_c| / 127`` (a tiny floor keeps them positive)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return torch.clamp(amax, min=1e-12) / QMAX


def quantize_weight(weight: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """Per-channel symmetric INT8 fake quantization of a weight tensor (axis 0)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return fake_quant(weight, weight_scales(weight).reshape(shape), ste)


class QuantConv2d(nn.Conv2d):
    """A ``Conv2d`` whose input and weight pass through simulated precision.

    Not built directly: :func:`simulate` swaps the class of existing convolutions. Attributes
    ``w_mode`` (``"int8"``, ``"fp16"`` or ``"none"``), ``a_mode`` (``"int8"`` or ``"none"``),
    ``act_scale`` (float, the input step of ``"int8"``) and ``ste`` (bool).
    """

    w_mode: str = "none"
    a_mode: str = "none"
    act_scale: float = 1.0
    ste: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.a_mode == "int8":
            x = fake_quant(x, self.act_scale, self.ste)
        w = self.weight
        if self.w_mode == "int8":
            w = quantize_weight(w, self.ste)
        elif self.w_mode == "fp16":
            w = w + (w.half().float() - w).detach()
        return self._conv_forward(x, w, self.bias)


def simulate(model: nn.Module, precision: Mapping[str, str], act_scales: Mapping[str, float],
             ste: bool = False, fold: bool = True, weights_done: Optional[Mapping[str, bool]] = None) -> nn.Module:
    """Copy of ``model`` (BN folded) whose convolutions run at their assigned precision.

    Parameters
    ----------
    model : torch.nn.Module
    precision : dict
        Layer name -> ``"fp32"``, ``"fp16"`` or ``"int8"``; missing layers stay fp32.
    act_scales : dict
        Layer name -> input scale of each ``"int8"`` layer.
    ste : bool
        Straight-through gradients (for QAT).
    fold : bool
        Fold BatchNorm first (always, except for an already folded model).
    weights_done : dict, optional
        Layers whose weights were already replaced (k-means codebooks): only their input is quantized.

    Returns
    -------
    torch.nn.Module
    """
    out = fold_bn(model) if fold else copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, prec in precision.items():
        if prec not in PRECISIONS:
            raise ValueError(f"layer {name}: precision {prec!r} is not one of {PRECISIONS}")
        m = modules.get(name)
        if not isinstance(m, nn.Conv2d) or prec == "fp32":
            continue
        m.__class__ = QuantConv2d
        m.ste = ste
        if prec == "int8":
            if name not in act_scales:
                raise KeyError(f"layer {name} is int8 but has no activation scale")
            m.a_mode, m.act_scale = "int8", float(act_scales[name])
            m.w_mode = "none" if (weights_done or {}).get(name) else "int8"
        else:
            m.a_mode, m.w_mode = "none", "fp16"
    return out


def strip(model: nn.Module) -> nn.Module:
    """Swap :class:`QuantConv2d` back to ``nn.Conv2d`` in place (float weights kept) and return ``model``."""
    for m in model.modules():
        if isinstance(m, QuantConv2d):
            m.__class__ = nn.Conv2d
            for attr in ("w_mode", "a_mode", "act_scale", "ste"):
                m.__dict__.pop(attr, None)
    return model


def all_int8(model: nn.Module) -> Dict[str, str]:
    """Precision map with every Conv2d at int8 and every Linear at fp32."""
    return {n: ("int8" if isinstance(m, nn.Conv2d) else "fp32") for n, m in weighted_layers(model)}
