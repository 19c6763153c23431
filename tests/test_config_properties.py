"""Property-based: every invalid config value is rejected (naming its key) before training; every valid one passes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sircil.config import config_from_dict
from sircil.config_io import ConfigError

# key -> (strategy of values, oracle of validity); the oracle restates the documented ranges
FIELDS = {
    ("memory", "per_class"): (st.integers(-3, 40), lambda v: v >= 0),
    ("train", "epochs"): (st.integers(-2, 6), lambda v: v >= 1),
    ("train", "batch_size"): (st.integers(-2, 300), lambda v: v >= 1),
    ("train", "lr"): (st.floats(-1, 3, allow_nan=False), lambda v: v > 0),
    ("train", "momentum"): (st.floats(-0.5, 1.5, allow_nan=False), lambda v: 0 <= v < 1),
    ("train", "weight_decay"): (st.floats(-1e-3, 1e-2, allow_nan=False), lambda v: v >= 0),
    ("train", "lr_decay"): (st.floats(-0.5, 1.5, allow_nan=False), lambda v: 0 < v <= 1),
    ("train", "checkpoint_every"): (st.integers(-2, 20), lambda v: v >= 0),
    ("data", "brightness"): (st.floats(-0.5, 1.5, allow_nan=False), lambda v: 0 <= v <= 1),
    ("data", "pad"): (st.integers(-2, 8), lambda v: v >= 0),
    ("sir", "fc"): (st.floats(-1, 3, allow_nan=False), lambda v: v >= 0),
    ("sir", "ca"): (st.floats(-0.5, 1.5, allow_nan=False), lambda v: 0 < v <= 1),
    ("sir", "it"): (st.floats(-1, 3, allow_nan=False), lambda v: v >= 0),
}


def base() -> dict:
    return {
        "method": {"name": "finetune"},
        "data": {"dataset": "fashion_mnist"},
        "scenario": {"base_classes": 2, "steps": 4},
        "train": {"epochs": 4, "milestones": []},
    }


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_each_value_is_accepted_exactly_when_it_is_in_range(data):
    keys = data.draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True))
    raw = base()
    invalid = []
    for section, key in keys:
        strategy, valid = FIELDS[(section, key)]
        value = data.draw(strategy)
        raw.setdefault(section, {})[key] = value
        if not valid(value):
            invalid.append(f"{section}.{key}")
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        assert invalid, f"valid values rejected: {raw} -> {exc}"
        assert any(name in str(exc) for name in invalid), f"{exc} names none of {invalid}"
    else:
        assert not invalid, f"invalid {invalid} accepted: {raw}"


@settings(max_examples=200, deadline=None)
@given(base_classes=st.integers(-1, 12), steps=st.integers(-1, 12))
def test_scenarios_are_accepted_exactly_when_they_split_the_classes(base_classes, steps):
    raw = base()
    raw["scenario"] = {"base_classes": base_classes, "steps": steps}
    valid = 0 <= base_classes < 10 and steps >= 1 and (10 - base_classes) % steps == 0
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        assert not valid and "scenario." in str(exc)
    else:
        assert valid
