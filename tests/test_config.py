import pytest

from peft_rankdyna import RankDynaConfig


@pytest.mark.parametrize("kwargs, message", [
    ({"target_budget": 0.0}, "target_budget"),
    ({"target_budget": 1.2}, "target_budget"),
    ({"init_budget": 0.3, "target_budget": 0.5}, "init_budget"),
    ({"beta1": 1.0}, "beta1"),
    ({"beta2": -0.1}, "beta2"),
    ({"deltaT": 0}, "deltaT"),
    ({"deltaT": -3}, "deltaT"),
    ({"tinit": 1.5}, "tinit"),
    ({"orth_reg_weight": -1.0}, "orth_reg_weight"),
    ({"rank_multiple": 0}, "rank_multiple"),
    ({"tinit": 50, "tfinal": 60, "total_step": 100}, r"tinit=50.*tfinal=60.*total_step=100"),
    ({"tinit": 0.6, "tfinal": 0.5, "total_step": 100}, "Infeasible schedule"),
])
def test_bad_values_are_rejected_when_the_config_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RankDynaConfig(**kwargs)


def test_schedule_needs_total_steps():
    with pytest.raises(ValueError, match="total number of optimizer steps"):
        RankDynaConfig().schedule()
    assert RankDynaConfig(total_step=100).schedule().tinit == 10


def test_config_round_trips_through_json(tmp_path):
    config = RankDynaConfig(target_budget=0.25, tinit=5, tfinal=0.3, total_step=50, rank_multiple=8)
    config.save_pretrained(tmp_path)
    loaded = RankDynaConfig.from_pretrained(tmp_path)
    assert (loaded.target_budget, loaded.tinit, loaded.tfinal, loaded.rank_multiple) == (0.25, 5, 0.3, 8)
