"""ResNet34 encoder (written here: torchvision is not installable beside this torch) with a
UNet decoder over its stem and layer1-3 skips."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import register
from .unet import Up, decode, init_weights, pad_to_multiple, scaled_channels


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN with an identity (or 1x1 conv+BN projection) shortcut.

    (N, in_ch, H, W) -> (N, out_ch, H/stride, W/stride).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(x + shortcut)


class ResNet34Encoder(nn.Module):
    """ResNet34 without its classifier; returns the five feature maps a UNet decoder needs.

    (N, C, H, W) -> [stem (N, c1, H/2), layer1 (N, c1, H/4), layer2 (N, c2, H/8),
    layer3 (N, c3, H/16), layer4 (N, c4, H/32)] with c = 64, 128, 256, 512 (x width), for H, W
    multiples of 32. Attribute names follow torchvision's resnet34, so at width 1.0 its
    ImageNet state dict (minus `fc.*`) loads here unchanged. 21,284,672 parameters at width 1.0.
    """

    blocks = (3, 4, 6, 3)

    def __init__(self, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        chans = [scaled_channels(c, width) for c in (64, 128, 256, 512)]
        self.channels = [chans[0], *chans]  # of the five returned maps
        self.conv1 = nn.Conv2d(in_channels, chans[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, in_ch = [], chans[0]
        for i, (n, out_ch) in enumerate(zip(self.blocks, chans)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(*(BasicBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1)
                                          for j in range(n))))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


@register("resnet34_unet")
class ResNet34UNet(nn.Module):
    """ResNet34 encoder + UNet decoder (transposed-conv up, concat skip, double 3x3 conv+BN+ReLU).

    Decoder stages: layer4 -> +layer3 (H/16) -> +layer2 (H/8) -> +layer1 (H/4) -> +stem (H/2)
    -> one more stage without skip to full resolution (32 channels at width 1) -> 1x1 head.
    (N, in_channels, H, W) -> logits (N, 1, H, W) for any H, W (input padded to a multiple of
    32 internally, output cropped back). Kaiming-normal conv init, BN at (1, 0).
    Parameters (in_channels=3): 24,451,585 at width 1.0 (encoder 21,284,672), 386,265 at
    width 0.125. Forward FLOPs per image (`count_flops`, width 1.0): 1.18 G at 64 px, 18.9 G at 256 px.
    """

    stride = 32  # total downsampling; inputs are padded to a multiple of this

    def __init__(self, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.encoder = ResNet34Encoder(width, in_channels)
        c0, c1, c2, c3, c4 = self.encoder.channels
        self.up4 = Up(c4, c3, c3)
        self.up3 = Up(c3, c2, c2)
        self.up2 = Up(c2, c1, c1)
        self.up1 = Up(c1, c0, c0)
        c_full = max(8, c0 // 2)
        self.up0 = Up(c0, 0, c_full)
        init_weights(self)
        # the head keeps PyTorch's default (fan-in) init: Kaiming fan-out of a 1-channel conv
        # would start with logits of std ~10 and a saturated loss
        self.head = nn.Conv2d(c_full, 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(pad_to_multiple(x, self.stride))  # stem (1/2), then 1/4 ... 1/32
        return decode((self.up4, self.up3, self.up2, self.up1, self.up0), features, self.head, x.shape[-2:])
