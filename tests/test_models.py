import pytest
import torch

from core.models import build_model, count_parameters, flops_per_image
from core.paths import InputError


def test_seed_resnet_cifar_shape_and_parameter_count():
    model = build_model("seed-resnet", (3, 32, 32), 10)
    # conv 3->16 (432) + BN (32); 3 blocks x (2 convs 2304 + 2 BNs 32); Linear 256->10 (2570)
    assert count_parameters(model) == 432 + 32 + 3 * (2 * 2304 + 2 * 32) + 256 * 10 + 10 == 17050
    assert model.fc.in_features == 256
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 10)


def test_seed_resnet_mnist_matches_input_size():
    model = build_model("seed-resnet", (1, 28, 28), 10)
    assert model.fc.in_features == 16 * 3 * 3
    assert count_parameters(model) == 144 + 32 + 3 * (2 * 2304 + 64) + 144 * 10 + 10
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_seed_resnet_width_and_blocks_are_parameters():
    model = build_model("seed-resnet", (3, 32, 32), 10, width=8, blocks=1)
    assert len(model.layers) == 1 and model.fc.in_features == 8 * 16


def test_resnet20_size():
    model = build_model("resnet20", (3, 32, 32), 10)
    assert 0.26e6 < count_parameters(model) < 0.28e6
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_normalization_is_inside_the_model():
    model = build_model("seed-resnet", (1, 28, 28), 10, mean=(0.5,), std=(0.25,))
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))


def test_flops_count():
    model = build_model("seed-resnet", (3, 32, 32), 10)
    assert flops_per_image(model, (3, 32, 32)) == 2 * (27 * 16 * 1024 + 6 * 144 * 16 * 1024 + 2560)


def test_unknown_model_names_valid_ones():
    with pytest.raises(InputError, match="valid models: seed-resnet, resnet20"):
        build_model("vgg", (3, 32, 32))
