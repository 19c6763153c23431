import torch

from sircil.config_sections import MemoryConfig
from sircil.data.memory import Memory, herding


def test_herding_first_pick_is_the_sample_closest_to_the_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.1]])
    order = herding(feats, 4)
    assert order[0].item() == 2  # (0.7, 0.7) is the mean direction
    assert sorted(order.tolist()) == [0, 1, 2, 3]


def test_herding_running_mean_tracks_the_class_mean():
    torch.manual_seed(0)
    feats = torch.randn(200, 8)
    order = herding(feats, 10)
    normed = torch.nn.functional.normalize(feats, dim=1)
    mean = normed.mean(0)
    herd_err = (normed[order].mean(0) - mean).norm()
    rand_err = torch.stack([(normed[torch.randperm(200)[:10]].mean(0) - mean).norm() for _ in range(50)]).mean()
    assert herd_err < 0.5 * rand_err


def _memory_with(cfg: MemoryConfig, classes: dict[int, torch.Tensor]) -> Memory:
    memory = Memory(cfg)
    gen = torch.Generator().manual_seed(0)
    memory.add_classes(classes, lambda idx: torch.randn(idx.numel(), 4, generator=gen), gen)
    return memory


def test_per_class_budget_stores_indices_not_images():
    memory = _memory_with(MemoryConfig(per_class=3), {0: torch.arange(0, 10), 1: torch.arange(10, 20)})
    idx = memory.indices()
    assert idx.dtype == torch.long and idx.numel() == 6
    assert set(idx[:3].tolist()) <= set(range(10)) and set(idx[3:].tolist()) <= set(range(10, 20))


def test_fixed_total_budget_shrinks_old_classes_to_a_prefix():
    memory = _memory_with(MemoryConfig(per_class=None, total=12), {0: torch.arange(0, 50), 1: torch.arange(50, 100)})
    assert memory.counts() == {0: 6, 1: 6}
    first = memory.ranked[0][:4].clone()
    gen = torch.Generator().manual_seed(1)
    memory.add_classes({2: torch.arange(100, 150)}, lambda idx: torch.randn(idx.numel(), 4, generator=gen), gen)
    assert memory.counts() == {0: 4, 1: 4, 2: 4}
    assert torch.equal(memory.indices()[:4], first)
    assert memory.indices().numel() <= 12


def test_memory_state_round_trip():
    memory = _memory_with(MemoryConfig(per_class=2, selection="random"), {0: torch.arange(5)})
    other = Memory(MemoryConfig(per_class=2))
    other.load_state_dict(memory.state_dict())
    assert torch.equal(other.indices(), memory.indices())
