import pytest

from peft_rankdyna.budget import Schedule, break_even_rank, initial_rank, matrix_cost, resolve_steps


def test_matrix_cost_caps_at_dense_size():
    assert matrix_cost(10, 384, 384) == 10 * 768
    assert matrix_cost(384, 384, 384) == 384 * 384
    assert matrix_cost(0, 8, 4) == 0


def test_break_even_rank_is_first_rank_no_cheaper_dense():
    for out_f, in_f in [(384, 384), (1536, 384), (7, 3)]:
        rank = break_even_rank(out_f, in_f)
        assert matrix_cost(rank, out_f, in_f) == out_f * in_f
        assert (rank - 1) * (out_f + in_f) < out_f * in_f


def test_initial_rank_full_or_under_init_budget():
    assert initial_rank(384, 1536, None) == 384
    rank = initial_rank(384, 384, 1.0)
    assert rank * 768 <= 384 * 384 < (rank + 1) * 768
    assert initial_rank(384, 384, 0.5) * 768 <= 0.5 * 384 * 384


def test_resolve_steps_accepts_steps_and_fractions():
    assert resolve_steps(7, 100, "tinit") == 7
    assert resolve_steps(0.25, 100, "tinit") == 25
    with pytest.raises(ValueError, match="tinit"):
        resolve_steps(1.5, 100, "tinit")
    with pytest.raises(ValueError, match="tinit"):
        resolve_steps(-1, 100, "tinit")


def test_schedule_end_points_and_monotone():
    schedule = Schedule.build(tinit=10, tfinal=20, deltaT=5, total_step=100)
    budgets = [schedule.budget(step, 1000, 400) for step in range(100)]
    assert budgets[0] == budgets[9] == 1000  # warm-up at the initial budget
    assert budgets[10] == 1000  # the cubic starts from the initial budget
    assert budgets[80] == budgets[99] == 400  # final phase at the target
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert 400 < budgets[45] < 1000


def test_schedule_refreshes_every_delta_t_and_at_final_start():
    schedule = Schedule.build(tinit=10, tfinal=20, deltaT=5, total_step=100)
    refreshes = [step for step in range(100) if schedule.refreshes_at(step)]
    assert refreshes == [10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80]


def test_infeasible_schedule_names_the_numbers():
    with pytest.raises(ValueError, match=r"tinit=60.*tfinal=0.5.*total_step=100"):
        Schedule.build(tinit=60, tfinal=0.5, deltaT=1, total_step=100)
    with pytest.raises(ValueError, match="deltaT"):
        Schedule.build(tinit=1, tfinal=1, deltaT=0, total_step=100)
    with pytest.raises(ValueError, match="total_step"):
        Schedule.build(tinit=1, tfinal=1, deltaT=1, total_step=0)
