import pytest

from raytune_ft.config import TrialConfig


def test_defaults_are_valid_and_every_technique_is_off():
    cfg = TrialConfig()
    assert not (cfg.use_kd or cfg.use_l2sp or cfg.use_pruning or cfg.use_weight_decay or cfg.use_label_smoothing)


def test_from_dict_rejects_unknown_key_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown key 'kd_temprature'; did you mean 'kd_temperature'"):
        TrialConfig.from_dict({"kd_temprature": 2.0})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": "3"}, r"epochs must be int, got '3'"),
        ({"use_kd": 1}, r"use_kd must be bool, got 1"),
        ({"final_sparsity": 1.0}, r"final_sparsity must be >= 0.0 and < 1.0, got 1.0"),
        ({"optimizer": "lamb"}, r"unknown optimizer 'lamb'; choose from \['adamw', 'sgd'\]"),
        ({"pruning_start": 0.8, "pruning_end": 0.5}, r"pruning_end \(0.5\) must be >= pruning_start"),
        ({"lr": 0}, r"lr must be > 0.0, got 0.0"),
        ({"channel_round_to": 0}, r"channel_round_to must be >= 1, got 0"),
    ],
)
def test_bad_values_name_the_field_and_value(values, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict(values)


def test_ints_are_accepted_for_float_fields_and_frozen():
    cfg = TrialConfig.from_dict({"lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    with pytest.raises(AttributeError):
        cfg.lr = 2.0  # type: ignore[misc]
