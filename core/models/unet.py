"""The classic UNet (Ronneberger et al. 2015, with same-padding and BatchNorm), and the
building blocks the other UNet-style decoders share."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register


def scaled_channels(channels: int, width: float) -> int:
    """`channels * width` rounded to a multiple of 8 (hardware friendly), at least 8."""
    return max(8, int(round(channels * width / 8)) * 8)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad (N, C, H, W) at the bottom/right so H and W are multiples of `multiple`.

    Reflect padding (no artificial black border for the network to learn), falling back to
    replicate when the image is smaller than the pad. Callers crop the output back to
    [:H, :W]; this keeps encoder and decoder maps exactly aligned at any input size, and costs
    nothing for sizes already aligned. Memory format (e.g. channels_last) is preserved.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs with zero bias, BN at (1, 0): the encoder-decoder models' random init."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def decode(ups: Sequence[nn.Module], features: Sequence[Tensor], head: nn.Module, size: tuple[int, int]) -> Tensor:
    """A UNet decoder over an encoder's five feature maps (finest first): the deepest map up through each
    skip (`ups[0..3]`), one last stage without a skip (`ups[4]`), the 1x1 `head`, cropped back to `size`."""
    x = ups[0](features[4], features[3])
    for up, skip in zip(ups[1:4], (features[2], features[1], features[0])):
        x = up(x, skip)
    return head(ups[4](x))[..., :size[0], :size[1]]


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2: (N, in_ch, H, W) -> (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv: (N, in_ch, H, W) -> (N, out_ch, H/2, W/2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """2x2 stride-2 transposed conv, concatenate the encoder skip, DoubleConv.

    (N, in_ch, H, W) + skip (N, skip_ch, 2H, 2W) -> (N, out_ch, 2H, 2W). With skip_ch=0 the
    stage only upsamples and convolves (used where no encoder map exists at that resolution).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


@register("unet")
class UNet(nn.Module):
    """Classic UNet: four down and four up stages, channels 64-128-256-512-1024 (x width).

    Double 3x3 conv+BN+ReLU blocks, 2x2 max-pool down, 2x2 transposed-conv up, skips by
    concatenation, 1x1 conv head. (N, in_channels, H, W) -> logits (N, 1, H, W) for any H, W
    (input padded to a multiple of 16 internally, output cropped back).
    Parameters (in_channels=3): 31,037,633 at width 1.0, 486,553 at width 0.125.
    Forward FLOPs per image (`count_flops`, width 1.0): 6.0 G at 64 px, 96.3 G at 256 px.
    """

    stride = 16  # total downsampling; inputs are padded to a multiple of this

    def __init__(self, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled_channels(c, width) for c in (64, 128, 256, 512, 1024))
        self.inc = DoubleConv(in_channels, c1)
        self.down1, self.down2, self.down3, self.down4 = Down(c1, c2), Down(c2, c3), Down(c3, c4), Down(c4, c5)
        self.up1, self.up2, self.up3, self.up4 = Up(c5, c4, c4), Up(c4, c3, c3), Up(c3, c2, c2), Up(c2, c1, c1)
        self.head = nn.Conv2d(c1, 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x1 = self.inc(pad_to_multiple(x, self.stride))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.down4(x4)
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.head(x)[..., :h, :w]
