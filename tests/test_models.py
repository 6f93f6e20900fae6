import pytest
import torch

from rp_tune.models import IMAGENET_MODELS, build_model, layer_specs
from rp_tune.models.vgg import VGG_CONFIGS

CIFAR = [
    "cifar_resnet_8",
    "cifar_resnet_20",
    "cifar_resnet_20_8",
    "cifar_resnet_32_40",
    "cifar_resnet_56",
    "cifar_resnet_110",
] + [f"{k}_bn" for k in VGG_CONFIGS]


def test_resnet20_prunable_count():
    assert sum(s.numel for s in layer_specs(build_model("cifar_resnet_20"))) == 270_896


@pytest.mark.parametrize("name", CIFAR)
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_models_forward(name, classes):
    model = build_model(name, num_classes=classes).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, classes)
    specs = layer_specs(model)
    assert specs[0].kind == "conv" and specs[-1].kind == "linear"
    assert specs[-1].shape[0] == classes


def test_width_scales_channels():
    specs = layer_specs(build_model("cifar_resnet_20_32"))
    assert specs[0].shape == (32, 3, 3, 3)
    assert specs[-1].shape == (10, 128)


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_models_forward_small_input(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 7)
    specs = layer_specs(model)
    assert specs[0].name == "conv1" and specs[-1].name == "fc"


@pytest.mark.parametrize(
    "name,message",
    [
        ("cifar_resnet_21", "not 6n\\+2"),
        ("cifar_resnet_2", "not 6n\\+2"),
        ("cifar_resnet_20_0", "width 0 must be >= 1"),
        ("cifar_resnet_x", "does not match cifar_resnet_<depth>"),
        ("resnet1000", "unknown model 'resnet1000'; valid choices"),
        ("vgg16", "unknown model 'vgg16'"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(ValueError, match=message):
        build_model(name)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cifar_resnet_20", num_classes=0)


def test_imagenet_convs_start_from_kaiming_fan_in():
    """The ImageNet nets' convs are drawn as the CIFAR nets' are: Kaiming normal with the
    fan-in, std sqrt(2 / fan_in) (torchvision's default, fan_out, gives ResNet-18's stem
    std 0.025 instead of 0.117)."""
    import math

    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    stem = model.conv1.weight  # 64 x 3 x 7 x 7: fan_in 147
    assert stem.std().item() == pytest.approx(math.sqrt(2 / 147), rel=0.05)
    deep = model.layer4[0].conv2.weight  # 512 x 512 x 3 x 3: fan_in 4608
    assert deep.std().item() == pytest.approx(math.sqrt(2 / 4608), rel=0.02)


def test_the_small_image_resnets_of_gadhikar_et_al():
    """CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] at 64..512, 1x1
    shortcuts): 11,164,352 Conv2d + Linear weights for 10 classes; ResNet-50 for 64x64 Tiny
    ImageNet: bottlenecks [3, 4, 6, 3], classifier 2048 -> classes."""
    r18 = build_model("cifar_resnet18")
    assert sum(s.numel for s in layer_specs(r18)) == 11_164_352
    specs = layer_specs(r18)
    assert specs[0].shape == (64, 3, 3, 3) and specs[-1].shape == (10, 512)
    assert sum(s.kind == "conv" and s.shape[2:] == (1, 1) for s in specs) == 3  # shortcuts
    r50 = build_model("tiny_resnet50", num_classes=200).eval()
    specs = layer_specs(r50)
    assert specs[0].shape == (64, 3, 3, 3) and specs[-1].shape == (200, 2048)
    with torch.no_grad():
        assert r50(torch.randn(2, 3, 64, 64)).shape == (2, 200)
        assert r18.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the stem keeps 64x64: no stride, no max-pool before the first stage
    x = torch.randn(1, 3, 64, 64)
    assert r50.layer1(torch.relu(r50.bn1(r50.conv1(x)))).shape[-2:] == (64, 64)


def test_a_model_scored_scheme_on_the_cifar_resnet18():
    from rp_tune.sparsity import layer_densities

    model = build_model("cifar_resnet18")
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 10)
    plan = layer_densities("snip", layer_specs(model), 0.05, model=model, batch=batch)
    assert plan.total_kept == round(0.05 * plan.total)
