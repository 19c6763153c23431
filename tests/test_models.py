import pytest
import torch

from sircil.data.datasets import dataset_spec
from sircil.methods import METHODS, Step, method_class
from sircil.models import IncrementalLinear, build_backbone

from conftest import fashion_config, make_config


def test_resnet32_shape_and_size():
    net = build_backbone("resnet32", 3)
    # He et al. report 0.46M; 463,504 + a 10-way fc (650) = the 464,154 of the usual CIFAR-10 count
    assert sum(p.numel() for p in net.parameters()) == 463_504
    feats, maps = net(torch.randn(2, 3, 32, 32), return_maps=True)
    # PODNet's four maps: stages 1 and 2, stage 3 without its last block, the last block
    assert feats.shape == (2, 64)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8)]
    assert build_backbone("resnet32", 1)(torch.randn(2, 1, 28, 28)).shape == (2, 64)


def test_last_relu_switch():
    torch.manual_seed(0)
    with_relu = build_backbone("resnet32", 3).eval()
    without = build_backbone("resnet32", 3, last_relu=False).eval()
    without.load_state_dict(with_relu.state_dict())
    x = torch.randn(4, 3, 32, 32)
    _, maps = without(x, return_maps=True)
    assert (maps[-1] < 0).any()
    assert torch.allclose(with_relu(x), torch.relu(maps[-1]).mean((2, 3)))


def test_option_b_shortcut_has_projection_parameters():
    a = sum(p.numel() for p in build_backbone("resnet32", 3, shortcut="A").parameters())
    b = sum(p.numel() for p in build_backbone("resnet32", 3, shortcut="B").parameters())
    assert b > a


def test_head_expansion_keeps_old_rows():
    head = IncrementalLinear(8)
    head.expand(3)
    old_w, old_b = head.weight.detach().clone(), head.bias.detach().clone()
    head.expand(2)
    assert head.out_features == 5
    assert torch.equal(head.weight[:3], old_w) and torch.equal(head.bias[:3], old_b)
    assert head(torch.randn(4, 8)).shape == (4, 5)


def test_resnet18_stems_and_last_relu():
    cifar = build_backbone("resnet18_cifar", 3, shortcut="B", block_relu=True)
    # torchvision's ResNet-18 without its fc (11,176,512) with a 3x3 instead of a 7x7 stem
    assert sum(p.numel() for p in cifar.parameters()) == 11_176_512 - 64 * 3 * (49 - 9)
    feats, maps = cifar(torch.randn(2, 3, 32, 32), return_maps=True)
    assert feats.shape == (2, 512) and [m.shape[-1] for m in maps] == [32, 16, 8, 4]
    imagenet = build_backbone("resnet18", 1, shortcut="B", block_relu=True)
    assert [m.shape[-1] for m in imagenet(torch.randn(1, 1, 64, 64), return_maps=True)[1]] == [16, 8, 4, 2]
    torch.manual_seed(0)
    no_relu = build_backbone("resnet18_cifar", 3, last_relu=False).eval()
    _, maps = no_relu(torch.randn(2, 3, 32, 32), return_maps=True)
    assert (maps[-1] < 0).any()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_expanded_heads_live_where_the_model_was_moved(name):
    """A model is moved to its device once, before its first step: every layer a step adds must be
    created there (the cosine head's first weights were once left on the CPU of a CUDA run).
    The meta device stands in for a GPU."""
    cfg = make_config(fashion_config(method={"name": name}, train={"epochs": 20}))
    method = method_class(name)(cfg, dataset_spec("fashion_mnist"))
    method.model.to("meta")
    for index in range(3):
        method.expand(Step(index, 2 * index, 2 * index + 2))
        tensors = list(method.model.parameters()) + list(method.model.buffers())
        assert {t.device.type for t in tensors} == {"meta"}, f"step {index}"
