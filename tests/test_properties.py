"""Invariants of the schedule and the allocator over random shapes, budgets and scores (hypothesis)."""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_rankdyna.allocator import allocate
from peft_rankdyna.budget import Schedule, matrix_cost
from peft_rankdyna.layer import RankDynaLayer

shapes_strategy = st.dictionaries(
    keys=st.text(alphabet="abcdefgh.", min_size=1, max_size=6),
    values=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    min_size=1,
    max_size=6,
)


@st.composite
def allocation_problems(draw):
    shapes = draw(shapes_strategy)
    scores = {
        name: torch.tensor(draw(st.lists(st.floats(0, 1e3, allow_nan=False, width=32), min_size=min(s), max_size=min(s))))
        for name, s in shapes.items()
    }
    dense = sum(o * i for o, i in shapes.values())
    return shapes, scores, draw(st.integers(0, dense))


@settings(max_examples=200, deadline=None)
@given(allocation_problems())
def test_kept_parameters_never_exceed_the_budget(problem):
    shapes, scores, budget = problem
    allocation = allocate(scores, shapes, budget)
    kept = sum(matrix_cost(int(m.sum()), *shapes[n]) for n, m in allocation.masks.items())
    assert kept == allocation.kept_params <= budget


@settings(max_examples=100, deadline=None)
@given(allocation_problems(), st.randoms())
def test_allocation_is_invariant_to_layer_order(problem, rng):
    shapes, scores, budget = problem
    names = list(shapes)
    rng.shuffle(names)
    shuffled = allocate({n: scores[n] for n in names}, {n: shapes[n] for n in names}, budget)
    reference = allocate(scores, shapes, budget)
    assert all(torch.equal(reference.masks[n], shuffled.masks[n]) for n in shapes)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(3, 2000),
    tinit=st.one_of(st.floats(0, 0.45), st.integers(0, 3)),
    tfinal=st.floats(0, 0.45),
    delta=st.integers(1, 50),
    initial=st.integers(0, 10**8),
    target_fraction=st.floats(0, 1),
)
def test_schedule_is_monotone_and_hits_its_end_points(total, tinit, tfinal, delta, initial, target_fraction):
    try:
        schedule = Schedule.build(tinit, tfinal, delta, total)
    except ValueError:
        assume(False)  # infeasible schedules are rejected; tested in test_budget
    target = int(initial * target_fraction)
    budgets = [schedule.budget(step, initial, target) for step in range(total)]
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert budgets[0] == initial
    assert budgets[schedule.final_start] == budgets[-1] == target
    assert schedule.refreshes_at(schedule.final_start)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_a_mask_takes_effect_and_unmasking_restores_the_values(out_features, in_features, data):
    layer = RankDynaLayer(nn.Linear(in_features, out_features), "default")
    before = [p.detach().clone() for p in layer.factor_parameters()]
    U, s, Vt = before
    x = torch.randn(4, in_features)
    rank = layer.initial_rank
    for _ in range(3):
        mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rank, max_size=rank)))
        layer.set_mask(mask)
        assert torch.equal(layer.mask, mask) and layer.rank == int(mask.sum())
        expected = x @ ((U * (s * mask)) @ Vt).T + layer.base_layer.bias
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.set_mask(torch.ones(rank, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.factor_parameters()))
