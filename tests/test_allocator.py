import torch

from peft_rankdyna.allocator import allocate
from peft_rankdyna.budget import matrix_cost


def _kept_cost(allocation, shapes):
    return sum(matrix_cost(int(mask.sum()), *shapes[name]) for name, mask in allocation.masks.items())


def test_budget_honoured_and_reported():
    torch.manual_seed(0)
    shapes = {"a": (16, 16), "b": (48, 16), "c": (16, 48)}
    scores = {name: torch.rand(min(shape)) for name, shape in shapes.items()}
    for budget in [0, 33, 100, 500, 1000, 2000]:
        allocation = allocate(scores, shapes, budget)
        assert allocation.kept_params == _kept_cost(allocation, shapes) <= budget


def test_keeps_best_groups_within_a_matrix():
    shapes = {"a": (8, 8)}
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0, 0.0, 0.0, 0.0])}
    allocation = allocate(scores, shapes, budget=2 * 16)
    assert allocation.masks["a"].tolist() == [False, True, True, False, False, False, False, False]
    assert abs(allocation.threshold - 0.3 / 16) < 1e-7


def test_price_per_parameter_not_score_alone():
    # A wide matrix's group costs 4x more; with a slightly higher score it still loses.
    shapes = {"square": (10, 10), "wide": (70, 10)}
    scores = {"square": torch.tensor([1.0] + [0.0] * 9), "wide": torch.tensor([1.5] + [0.0] * 9)}
    allocation = allocate(scores, shapes, budget=21)
    assert allocation.ranks == {"square": 1, "wide": 0}


def test_matrix_past_break_even_is_kept_whole():
    shapes = {"a": (4, 4)}  # group cost 9, dense 16: from rank 2 on the matrix is stored dense
    allocation = allocate({"a": torch.tensor([4.0, 3.0, 2.0, 1.0])}, shapes, budget=16)
    assert allocation.ranks == {"a": 4}
    assert allocation.kept_params == 16


def test_independent_of_matrix_order():
    torch.manual_seed(1)
    shapes = {f"m{i}": (12 + i, 20 - i) for i in range(6)}
    scores = {name: torch.rand(min(shape)).round(decimals=1) for name, shape in shapes.items()}  # many ties
    forward = allocate(scores, shapes, 700)
    backward = allocate(dict(reversed(list(scores.items()))), dict(reversed(list(shapes.items()))), 700)
    assert forward.ranks == backward.ranks
    assert all(torch.equal(forward.masks[n], backward.masks[n]) for n in shapes)


def _best_value(scores, shapes, budget):
    """Brute force: the most total score any choice of ranks within ``budget`` keeps (best groups first)."""
    import itertools

    names = sorted(scores)
    sorted_scores = {n: torch.sort(scores[n], descending=True).values for n in names}
    best = 0.0
    for ranks in itertools.product(*(range(len(scores[n]) + 1) for n in names)):
        if sum(matrix_cost(r, *shapes[n]) for r, n in zip(ranks, names)) <= budget:
            best = max(best, sum(float(sorted_scores[n][:r].sum()) for r, n in zip(ranks, names)))
    return best


def test_the_budget_is_used_up_to_one_group_and_the_greedy_is_near_the_optimum():
    generator = torch.Generator().manual_seed(0)
    gaps = []
    for trial in range(60):
        count = int(torch.randint(2, 4, (1,), generator=generator))
        shapes = {f"m{i}": tuple(int(v) for v in torch.randint(2, 7, (2,), generator=generator)) for i in range(count)}
        scores = {n: torch.rand(min(s), generator=generator) ** 3 for n, s in shapes.items()}
        dense = sum(o * i for o, i in shapes.values())
        budget = int(torch.randint(0, dense + 1, (1,), generator=generator))
        allocation = allocate(scores, shapes, budget)
        largest_group = max(o + i for o, i in shapes.values())
        everything = sum(matrix_cost(min(s), *s) for s in shapes.values())
        assert allocation.kept_params <= budget
        assert allocation.kept_params > budget - largest_group or allocation.kept_params == everything
        value = sum(float(scores[n][m].sum()) for n, m in allocation.masks.items())
        best = _best_value(scores, shapes, budget)
        assert value <= best + 1e-6
        gaps.append((best - value) / best if best > 0 else 0.0)
    # Measured on these 60 instances (seed 0): the greedy by score per parameter is exact on 46, 2.2% below the
    # optimum on average, 41% at worst (a tiny matrix whose cheap dense form the greedy does not see coming).
    gaps.sort()
    assert sum(g == 0.0 for g in gaps) >= 40 and sum(gaps) / len(gaps) < 0.05 and gaps[-1] < 0.5, gaps
