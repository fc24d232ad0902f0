import copy

import pytest
import torch
from torch import nn

import core.models as models
from core.models import available_models, build_model, count_flops, register
from core.losses import SegmentationLoss
from core.models.efficientnet_lite0_unet import EfficientNetLite0UNet
from core.models.unet import scaled_channels
from core.training.loop import cpu_has_fast_bf16

ARCHS = ["unet", "resnet34_unet", "efficientnet_lite0_unet"]


@pytest.fixture(scope="module", params=ARCHS)
def small_model(request) -> nn.Module:
    torch.manual_seed(0)
    return build_model(request.param, width=0.125)


@pytest.mark.parametrize("size", [(64, 64), (72, 72), (100, 100), (72, 100), (20, 13)])
def test_logits_have_the_input_spatial_shape_for_any_size(small_model, size):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert small_model.eval()(x).shape == (2, 1, *size)


def test_in_channels_sets_the_first_conv_input():
    with torch.no_grad():
        out = build_model("resnet34_unet", width=0.125, in_channels=1).eval()(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 1, 32, 32)


def test_channels_last_input_gives_the_same_logits(small_model):
    x = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        small_model.train()  # batch statistics: a meaningful output at initialisation
        contiguous = small_model(x)
        channels_last = small_model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, contiguous, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_runs_and_stays_close_to_fp32(small_model):
    if isinstance(small_model, EfficientNetLite0UNet) and not cpu_has_fast_bf16():
        pytest.skip("without native bf16, PyTorch runs depthwise convolutions group by group (~30 s here); "
                    "amp=auto never picks bf16 on such a CPU")
    x = torch.randn(2, 3, 64, 64)
    small_model.train()
    with torch.no_grad():
        fp32 = small_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = small_model(x.contiguous(memory_format=torch.channels_last))
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_backward_reaches_the_first_conv(small_model):
    small_model.train().zero_grad()
    small_model(torch.randn(2, 3, 40, 40)).mean().backward()
    first_conv = next(m for m in small_model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


def test_unknown_architecture_error_lists_the_choices():
    with pytest.raises(ValueError) as err:
        build_model("x")
    assert str(err.value) == "unknown architecture 'x'; choose from: efficientnet_lite0_unet, resnet34_unet, unet"


def test_invalid_width_is_rejected():
    with pytest.raises(ValueError, match="width"):
        build_model("unet", width=0)


def test_a_registered_architecture_is_buildable(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))

    @register("tiny")
    class Tiny(nn.Conv2d):
        def __init__(self, width: float = 1.0, in_channels: int = 3):
            super().__init__(in_channels, 1, 1)

    model = build_model("tiny", in_channels=5)
    assert isinstance(model, Tiny) and model.in_channels == 5
    assert available_models() == ["efficientnet_lite0_unet", "resnet34_unet", "tiny", "unet"]
    with pytest.raises(ValueError, match="already registered"):
        register("tiny")(Tiny)


def _n_params(name: str, width: float = 1.0) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(name, width=width).parameters())


def test_parameter_counts_at_full_width():
    assert _n_params("unet") == 31_037_633  # the classic UNet's well-known 31.0M
    assert 21e6 <= _n_params("resnet34_unet") <= 25e6


def test_resnet34_encoder_matches_torchvision_resnet34():
    with torch.device("meta"):
        encoder = build_model("resnet34_unet").encoder
    assert [len(encoder.layer1), len(encoder.layer2), len(encoder.layer3), len(encoder.layer4)] == [3, 4, 6, 3]
    # torchvision resnet34 has 21,797,672 parameters, 513,000 of them in its 512->1000 classifier
    assert sum(p.numel() for p in encoder.parameters()) == 21_797_672 - 513_000


@pytest.mark.parametrize("width, expected", [(1.0, 64), (0.125, 8), (0.1, 8), (0.3, 16), (0.01, 8)])
def test_width_scales_channels_to_multiples_of_8(width, expected):
    assert scaled_channels(64, width) == expected


def test_count_flops_of_a_single_conv_is_2_macs_per_output_tap():
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1, groups=1)
    assert count_flops(conv, image_size=10) == 2 * (16 * 10 * 10) * (3 * 3 * 3)
    grouped = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=4)
    assert count_flops(grouped, image_size=10, in_channels=8) == 2 * (16 * 5 * 5) * (2 * 3 * 3)


def test_count_flops_of_transposed_conv_and_linear():
    up = nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
    assert count_flops(up, image_size=5, in_channels=8) == 2 * (4 * 10 * 10) * 8  # one tap per output
    fc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert count_flops(fc, image_size=4) == 2 * 48 * 10


def test_count_flops_of_unet_sums_its_stages():
    # width 0.125: channels 8, 16, 32, 64, 128; at 32 px the stages run at 32, 16, 8, 4, 2 px
    def conv(cin, cout, px, k=3):
        return cin * k * k * cout * px * px

    def double(cin, cout, px):
        return conv(cin, cout, px) + conv(cout, cout, px)

    c, px = [8, 16, 32, 64, 128], [32, 16, 8, 4, 2]
    macs = double(3, 8, 32) + conv(8, 1, 32, k=1)
    for i in range(1, 5):
        macs += double(c[i - 1], c[i], px[i])                                   # down
        macs += c[i] * c[i - 1] * px[i - 1] ** 2 + double(2 * c[i - 1], c[i - 1], px[i - 1])  # up
    model = build_model("unet", width=0.125)
    assert count_flops(model, image_size=32) == 2 * macs
    assert model.training  # mode restored


def test_count_flops_includes_padding_to_a_multiple_of_16():
    model = build_model("unet", width=0.125)
    assert count_flops(model, image_size=20) == count_flops(model, image_size=32)


def test_an_ensemble_evaluates_to_its_members_mean_logits():
    torch.manual_seed(0)
    ens = build_model("unet", width=0.125, members=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        each = [m(x) for m in ens.members]
        assert ens(x).shape == (2, 1, 32, 32)
        assert torch.allclose(ens(x), torch.stack(each).mean(0), atol=1e-6)
        assert not torch.allclose(each[0], each[1])  # independently initialised members


def test_an_ensemble_in_training_runs_each_member_on_its_own_part_of_the_batch():
    torch.manual_seed(0)
    ens = build_model("unet", width=0.125, members=2).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = ens(x)
        assert logits.shape == (4, 1, 32, 32)
        # BatchNorm in training normalises by the batch: equal rows mean each member saw only its own part
        assert torch.allclose(logits[:2], ens.members[0](x[:2]), atol=1e-5)
        assert torch.allclose(logits[2:], ens.members[1](x[2:]), atol=1e-5)
        assert not torch.allclose(logits[:2], ens.members[0](x)[:2], atol=1e-3)
    with pytest.raises(ValueError, match="does not split into 2"):
        ens.train()(torch.randn(3, 3, 32, 32))


def test_each_ensemble_member_learns_only_from_its_own_batch():
    """One loss over the members' rows gives member 0 exactly the gradient of its own loss / K."""
    torch.manual_seed(0)
    ens = build_model("unet", width=0.125, members=2).train()
    x, target = torch.randn(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    loss = SegmentationLoss()
    loss(ens(x), target).backward()
    together = ens.members[0].head.weight.grad.clone()
    alone = copy.deepcopy(ens.members[0])
    alone.zero_grad()
    (loss(alone(x[:2]), target[:2]) / 2).backward()
    assert torch.allclose(together, alone.head.weight.grad, atol=1e-6)


def test_an_ensemble_needs_at_least_one_member():
    with pytest.raises(ValueError, match="members must be >= 1"):
        build_model("unet", members=0)
    assert isinstance(build_model("unet", width=0.125, members=1), models.MODELS["unet"])
