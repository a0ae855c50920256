import torch

from qfm_iqm.training.noise import FeatureMemory, match_semantic_noise, norm_matched_noise


def _unit(v):
    return torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)


def _memory(semantic, labels, ids, capacity=8):
    memory = FeatureMemory(capacity, token_dtype=torch.float32)
    tokens = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3).clone() + 1
    memory.push(_unit(semantic), tokens[:, 0], tokens, torch.tensor(labels), torch.tensor(ids))
    return memory


def test_matching_picks_most_dissimilar_quality_equivalent_entry():
    memory = _memory(
        [[1, 0], [0.9, 0.1], [-1, 0], [-1, 0.05], [0, 1]],
        [0.50, 0.52, 0.90, 0.53, 0.49],
        [0, 1, 2, 3, 4],
    )
    # the query is image 0: entry 2 is most dissimilar but of other quality; entry 3 qualifies
    slots, found = match_semantic_noise(_unit([[1, 0]]), torch.tensor([0.5]), torch.tensor([0]), memory, 0.05)
    assert found.tolist() == [True]
    assert slots.tolist() == [3]


def test_matching_never_picks_the_image_itself():
    memory = _memory([[1, 0], [-1, 0]], [0.5, 0.5], [7, 7])
    slots, found = match_semantic_noise(_unit([[1, 0]]), torch.tensor([0.5]), torch.tensor([7]), memory, 0.05)
    assert found.tolist() == [False]


def test_no_candidate_means_no_noise():
    memory = _memory([[1, 0]], [0.1], [1])
    _, found = match_semantic_noise(_unit([[0, 1]]), torch.tensor([0.9]), torch.tensor([2]), memory, 0.05)
    assert found.tolist() == [False]
    empty = FeatureMemory(4)
    _, found = match_semantic_noise(_unit([[0, 1]]), torch.tensor([0.9]), torch.tensor([2]), empty, 0.05)
    assert found.tolist() == [False]


def test_memory_is_fifo_and_bounded():
    memory = FeatureMemory(3, token_dtype=torch.float32)
    for step in range(5):
        tokens = torch.full((1, 2, 2), float(step))
        memory.push(_unit([[1.0, step]]), tokens[:, 0], tokens, torch.tensor([0.1 * step]), torch.tensor([step]))
    assert memory.size == 3
    assert sorted(memory.image_ids.tolist()) == [2, 3, 4]


def test_memory_state_round_trip():
    memory = _memory([[1, 0], [0, 1]], [0.2, 0.4], [0, 1], capacity=4)
    copy = FeatureMemory(4, token_dtype=torch.float32)
    copy.load_state_dict(memory.state_dict())
    assert copy.size == 2 and copy.pointer == 2
    assert torch.equal(copy.tokens, memory.tokens) and torch.equal(copy.semantic, memory.semantic)
    assert torch.equal(copy.globals, memory.globals)


def test_noise_is_norm_matched_and_carries_no_gradient():
    own = torch.randn(2, 5, 4, requires_grad=True)
    other = torch.randn(2, 5, 4) * 10
    noise = norm_matched_noise(own, other, 0.3)
    assert not noise.requires_grad
    ratio = noise.flatten(1).norm(dim=1) / own.detach().flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.full((2,), 0.3), atol=1e-5)
    (own + noise).sum().backward()
    assert torch.equal(own.grad, torch.ones_like(own))
