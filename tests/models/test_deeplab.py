"""DeepLab models and dense heads: output shapes, gradient paths, head details."""

from __future__ import annotations

import torch

from raycseg.models import (
    ASPP,
    DeepLabV2,
    DeepLabV3Plus,
    DenseHead,
    MaskContrastHead,
    build_backbone,
    scale_aspp_rates,
)


def test_dense_head_is_a_per_pixel_mlp():
    head = DenseHead(64, 16).eval()
    features = torch.randn(2, 64, 5, 7)
    out = head(features)
    assert out.shape == (2, 16, 5, 7)
    # per pixel: the same MLP applied to one pixel alone gives the same vector
    single = head(features[:, :, 2:3, 4:5])
    torch.testing.assert_close(out[:, :, 2:3, 4:5], single)
    assert head.net[0].in_channels == 64 and head.net[0].out_channels == 64
    assert DenseHead(64, 16, hidden=32).net[0].out_channels == 32


def test_deeplabv3plus_outputs_both_heads_at_the_layer1_grid():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", output_stride=16)
    model = DeepLabV3Plus(backbone, num_classes=5, rep_dim=32)
    logits, rep = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5, 16, 16) and rep.shape == (2, 32, 16, 16)
    assert [conv.dilation[0] for conv in _dilated_convs(model.aspp)] == [6, 12, 18]
    (logits.square().mean() + rep.square().mean()).backward()
    assert backbone.conv1.weight.grad.abs().sum() > 0
    assert model.low_level[0].weight.grad.abs().sum() > 0


def test_deeplabv3plus_on_the_tiny_backbone_with_scaled_rates():
    backbone = build_backbone("tiny", width=16)
    model = DeepLabV3Plus(backbone, num_classes=3, aspp_rates=scale_aspp_rates((6, 12, 18), 16, 21))
    logits, rep = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3, 32, 32) and rep.shape == (2, 256, 32, 32)
    assert [conv.dilation[0] for conv in _dilated_convs(model.aspp)] == [5, 9, 14]


def test_scale_aspp_rates_is_proportional_with_a_floor_of_one():
    assert scale_aspp_rates((6, 12, 18), 21, 21) == (6, 12, 18)
    assert scale_aspp_rates((6, 12, 18), 6, 21) == (2, 3, 5)
    assert scale_aspp_rates((12, 24, 36), 1, 28) == (1, 1, 1)


def test_deeplabv2_sums_dilated_classifiers_and_has_a_1x1_representation():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", output_stride=8)
    model = DeepLabV2(backbone, num_classes=4, rep_dim=8).eval()
    images = torch.randn(1, 3, 64, 64)
    logits, rep = model(images)
    assert logits.shape == (1, 4, 8, 8) and rep.shape == (1, 8, 8, 8)
    with torch.no_grad():
        features = backbone(images)
        expected = sum(conv(features) for conv in model.classifier)
    torch.testing.assert_close(logits, expected)
    assert [conv.dilation[0] for conv in model.classifier] == [6, 12, 18, 24]
    assert model.representation.kernel_size == (1, 1)
    assert float(model.classifier[0].weight.detach().std()) < 0.02


def test_maskcontrast_head_shapes_and_biases():
    torch.manual_seed(0)
    backbone = build_backbone("tiny", width=16)
    model = MaskContrastHead(backbone, embedding_dim=32, aspp_rates=(2, 4, 6))
    images = torch.randn(2, 3, 64, 64)
    embeddings, saliency = model(images)
    assert embeddings.shape == (2, 32, 16, 16) and saliency.shape == (2, 16, 16)
    assert model.decoder_features(images).shape == (2, 256, 16, 16)
    assert model.embedding.bias is not None and model.saliency.bias is None
    assert isinstance(model.decoder[0], ASPP)
    assert model.decoder[0].project[-1].p == 0.5
    assert [conv.dilation[0] for conv in _dilated_convs(model.decoder[0])] == [2, 4, 6]
    assert len(model.decoder[0].branches) == 5  # 1×1, three rates, image pooling


def test_maskcontrast_defaults_follow_the_spec():
    model = MaskContrastHead(build_backbone("tiny", width=8))
    assert [conv.dilation[0] for conv in _dilated_convs(model.decoder[0])] == [12, 24, 36]


def _dilated_convs(aspp: ASPP):
    return [branch[0] for branch in aspp.branches[1:-1]]
