"""CloudNet: a small per-pixel cloud segmenter for 6-band 64x64 tiles.

The layout follows the spirit of DIAnet (a high-resolution branch kept parallel to a
multi-resolution context branch), cut down to what an onboard INT8 engine runs well:

```
dn_norm (N,6,H,W)
  stem:    Conv3x3(6->w) BN ReLU                                    full resolution
  high:    Conv3x3(w->w) BN ReLU                                    full resolution
  context: MaxPool2 Conv3x3(w->2w) BN ReLU MaxPool2 Conv3x3(2w->2w) BN ReLU
           Conv1x1(2w->w) BN ReLU                                   (H/4)
           Upsample x4 (nearest)                                    back to full resolution
  fuse:    Concat(high, context) Conv1x1(2w->w) BN ReLU + stem (residual Add)
  head:    Conv1x1(w->1) -> logits
mask = Sigmoid(logits);  cloud_fraction = mean over pixels of (mask > 0.5)   (N,1)
```

DIAnet's interactive spatial/channel attention is left out on purpose: the two-branch fusion
carries most of its benefit on 64x64 tiles, and every op above (Conv, BatchNorm folded at
export, ReLU, MaxPool, nearest Resize, Concat, Add, Sigmoid, Greater, Cast, ReduceMean) is a
plain TensorRT 8.2 layer with a symmetric INT8 form for the convolutions. The tile size must
be a multiple of 4 (two 2x poolings).

The context branch's 1x1 convolution runs *before* the nearest upsampling: a per-pixel op
commutes with nearest upsampling, so this is the same function at 1/16 of the cost. The fusion
is a 1x1 convolution for the same reason (full-resolution 3x3 convolutions dominate the cost).

Widths: ``"quick"`` (w=8, 4,857 parameters, about 1.6k MACs per pixel) trains in seconds on two
CPU cores; ``"full"`` (w=16, 18,289 parameters, about 5.5k MACs per pixel) is the demo width.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

#: Channel width ``w`` of each named size.
WIDTHS = {"quick": 8, "full": 16}


def _conv_bn_relu(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def resolve_width(width) -> int:
    """Return the channel width for a name in :data:`WIDTHS` or a positive int.

    Parameters
    ----------
    width : str or int
        ``"quick"``, ``"full"`` or an explicit channel count.

    Returns
    -------
    int
        The channel width ``w``.
    """
    if isinstance(width, str):
        if width not in WIDTHS:
            raise ValueError(f"unknown CloudNet width {width!r}; choose one of {sorted(WIDTHS)} or an int")
        return WIDTHS[width]
    width = int(width)
    if width < 1:
        raise ValueError(f"CloudNet width must be positive, got {width}")
    return width


class CloudNet(nn.Module):
    """Two-branch per-pixel cloud segmenter.

    Parameters
    ----------
    bands : int
        Number of input spectral bands (6 for the Landsat-7 ETM+ reflective bands).
    width : str or int
        ``"quick"`` (8), ``"full"`` (16) or an explicit channel width.
    threshold : float
        Probability above which a pixel counts as cloud in ``cloud_fraction``.

    Notes
    -----
    ``forward`` returns ``(mask, cloud_fraction)``: ``mask`` is the per-pixel cloud probability
    (N,1,H,W) and ``cloud_fraction`` (N,1) the fraction of pixels whose probability is above
    ``threshold``, computed inside the graph so an exported engine outputs it directly.
    Training uses :meth:`forward_logits`.
    """

    def __init__(self, bands: int = 6, width="quick", threshold: float = 0.5):
        super().__init__()
        w = resolve_width(width)
        self.bands, self.width, self.threshold = bands, w, float(threshold)
        self.stem = _conv_bn_relu(bands, w)
        self.high = _conv_bn_relu(w, w)
        self.context = nn.Sequential(
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 2 * w),
            _conv_bn_relu(2 * w, w, k=1),
            nn.Upsample(scale_factor=4, mode="nearest"),
        )
        self.fuse = _conv_bn_relu(2 * w, w, k=1)
        self.head = nn.Conv2d(w, 1, 1)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel cloud logits.

        Parameters
        ----------
        x : torch.Tensor
            Normalized tiles, float32 (N, bands, H, W), H and W multiples of 4.

        Returns
        -------
        torch.Tensor
            Logits (N, 1, H, W).
        """
        s = self.stem(x)
        f = self.fuse(torch.cat([self.high(s), self.context(s)], dim=1)) + s
        return self.head(f)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cloud probability mask and per-tile cloud fraction.

        Parameters
        ----------
        x : torch.Tensor
            Normalized tiles, float32 (N, bands, H, W).

        Returns
        -------
        mask : torch.Tensor
            Cloud probability (N, 1, H, W).
        cloud_fraction : torch.Tensor
            Fraction of pixels with probability above ``threshold``, (N, 1).
        """
        mask = torch.sigmoid(self.forward_logits(x))
        cloudy = (mask > self.threshold).to(mask.dtype)
        return mask, cloudy.mean(dim=(2, 3))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    int
        Sum of the element counts of parameters that require gradients.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
