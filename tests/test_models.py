import pytest
import torch

from segtool.config import ModelConfig
from segtool.errors import CheckpointError
from segtool.models import build_model
from segtool.models.encoder import MobileNetV2Encoder


@pytest.mark.parametrize("head", ["lraspp", "deeplabv3plus", "unet"])
@pytest.mark.parametrize("width", [0.35, 1.0, 1.4])
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_logits_at_input_size_for_odd_sizes(head, width, stride):
    torch.manual_seed(0)
    model = build_model(ModelConfig(head=head, width_mult=width, output_stride=stride, head_channels=32), 5)
    x = torch.randn(2, 3, 45, 67)
    y = model(x)
    assert y.shape == (2, 5, 45, 67)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_encoder_declares_channels_and_strides(stride):
    enc = MobileNetV2Encoder(width_mult=1.0, output_stride=stride)
    feats = enc(torch.randn(1, 3, 128, 160))
    assert enc.out_channels == [16, 24, 32, 96, 320]
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert enc.strides == [min(s, stride) for s in (2, 4, 8, 16, 32)]
    for f, s in zip(feats, enc.strides):
        assert f.shape[-2:] == (128 // s, 160 // s)


def test_encoder_stem_is_the_papers_32_filters():
    enc = MobileNetV2Encoder(width_mult=1.0)
    assert enc.features[0][0].out_channels == 32


def test_width_changes_channels():
    assert MobileNetV2Encoder(width_mult=0.35).out_channels[-1] < MobileNetV2Encoder(width_mult=1.4).out_channels[-1]


def test_pretrained_from_a_state_dict_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.mobilenet_v2(width_mult=0.5)
    path = tmp_path / "mnv2.pth"
    torch.save(ref.state_dict(), path)
    enc = MobileNetV2Encoder(width_mult=0.5, pretrained=str(path))
    assert torch.equal(enc.features[3].conv[0][0].weight, ref.features[3].conv[0][0].weight)


def test_pretrained_file_of_another_width_is_refused(tmp_path):
    import torchvision

    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=1.0).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit MobileNetV2 width 0.5.*set model.width_mult to theirs"):
        MobileNetV2Encoder(width_mult=0.5, pretrained=str(path))


def test_imagenet_weights_load_from_torchs_cache(tmp_path, monkeypatch):
    """`model.pretrained: imagenet` is torchvision's download, kept in $TORCH_HOME/hub: a
    state dict the test writes where the download lands stands in for the network."""
    import torchvision
    from torchvision.models import MobileNet_V2_Weights

    torch.manual_seed(2)
    ref = torchvision.models.mobilenet_v2(width_mult=1.0)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / MobileNet_V2_Weights.IMAGENET1K_V2.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enc = MobileNetV2Encoder(width_mult=1.0, pretrained="imagenet")
    assert torch.equal(enc.features[5].conv[0][0].weight, ref.features[5].conv[0][0].weight)
    with pytest.raises(CheckpointError, match="ImageNet weights are for width 1.0: set model.width_mult: 1.0"):
        MobileNetV2Encoder(width_mult=0.5, pretrained="imagenet")


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        MobileNetV2Encoder(pretrained=str(tmp_path / "none.pth"))


def test_imagenet_offline_says_how_to_use_a_file(monkeypatch):
    from torchvision.models import MobileNet_V2_Weights

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(MobileNet_V2_Weights.IMAGENET1K_V2.__class__, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match="set model.pretrained to the file's path"):
        MobileNetV2Encoder(pretrained="imagenet")


def test_heads_pick_their_skip_features_by_stride():
    from segtool.models.deeplabv3plus import DeepLabV3PlusHead
    from segtool.models.lraspp import LRASPPHead

    # An encoder with an extra stride-4 map: position 2 is no longer stride 8.
    channels, strides = [4, 6, 8, 10, 12], [2, 4, 4, 8, 16]
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(channels, strides)]
    lraspp = LRASPPHead(channels, strides, num_classes=3, channels=8)
    assert lraspp.low_tap == 3 and lraspp(feats).shape == (1, 3, 8, 8)
    deeplab = DeepLabV3PlusHead(channels, strides, num_classes=3, channels=8)
    assert deeplab.low_tap == 1 and deeplab(feats).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="LR-ASPP head needs features at stride 8"):
        LRASPPHead([4, 6], [2, 4], num_classes=3)
