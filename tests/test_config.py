import pytest

from sircil.config import load_config
from sircil.config_io import ConfigError, parse_override
from sircil.methods.icarl import ICaRLConfig

from conftest import fashion_config, make_config


def test_every_shipped_config_and_sweep_loads():
    from pathlib import Path

    from sircil.sweep import grid, load_sweep

    configs = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(p for p in configs.glob("**/*.yaml") if p.parent.name != "sweeps")
    assert files, "no configs shipped"
    for path in files:
        load_config(path)
    sweeps = sorted((configs / "sweeps").glob("*.yaml"))
    assert sweeps, "no sweeps shipped"
    for path in sweeps:
        spec = load_sweep(path)
        for run in grid(spec):
            run.config(spec.overrides, None)


def test_overrides_reach_nested_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: icarl}\ndata: {dataset: fashion_mnist}\n")
    cfg = load_config(path, ["memory.per_class=5", "scenario.steps=8", "scenario.base_classes=2", "train.lr=1e-3", "data.class_order=[0,1,2,3,4,5,6,7,8,9]"])
    assert cfg.memory.per_class == 5 and cfg.scenario.steps == 8
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.class_order == list(range(10))
    assert isinstance(cfg.method, ICaRLConfig)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "train.epoch; did you mean train.epochs"),
        ("memory.per_class=-1", "memory.per_class must be >= 0"),
        ("scenario.base_classes=12", "scenario.base_classes=12"),
        ("method.name=nosuch", "method.name must be one of"),
        ("memory.total=100", "exactly one of memory.per_class and memory.total"),
        ("train.batch_size=many", "train.batch_size must be an integer"),
        ("scenario.steps=3", "scenario.steps=3 does not divide"),
        ("data.dataset=mnist", "data.dataset must be one of"),
        ("train.milestones=[5, 2]", "train.milestones"),
        ("data.class_order=[0,1]", "data.class_order must be a permutation"),
        ("model.backbone=vgg", "model.backbone must be one of"),
        ("nosection.x=1", "unknown key nosection"),
        ("sir.cosine_scale=0", "sir.cosine_scale must be > 0"),
        ("sir.sigmoid=bias", "sir.sigmoid must be 'margin' or 'weight'"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(tmp_path, override, fragment):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: fashion_mnist}\nscenario: {base_classes: 2, steps: 4}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert fragment in str(err.value)


def test_override_syntax_errors_are_explained():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("memory.per_class")


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_hash_is_stable_and_sensitive():
    a = make_config(fashion_config())
    b = make_config(fashion_config())
    c = make_config(fashion_config(memory={"per_class": 5}))
    assert a.hash() == b.hash() != c.hash()
    located = make_config(fashion_config(cache_dir="/elsewhere", train={"threads": 2}))
    assert located.hash() == a.hash()  # neither changes a result
    explicit = make_config(fashion_config(train={"grad_clip_value": None}, sir={"enabled": False}))
    assert explicit.hash() == a.hash()  # defaults spelled out are the same config


def test_total_memory_budget_is_accepted():
    cfg = make_config(fashion_config(memory={"per_class": None, "total": 200}))
    assert cfg.memory.total == 200 and cfg.memory.per_class is None


def test_extends_layers_a_file_on_another(tmp_path):
    (tmp_path / "base.yaml").write_text("method: {name: icarl}\ndata: {dataset: fashion_mnist, pad: 2}\nmemory: {per_class: 20}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmemory: {per_class: 5}\ndata: {pad: 3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.memory.per_class == 5 and cfg.data.pad == 3 and cfg.data.dataset == "fashion_mnist"
    assert cfg.method.name == "icarl"
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")


def test_method_options_are_typed_per_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: podnet, proxies: 4}\ndata: {dataset: fashion_mnist}\n")
    assert load_config(path).method.proxies == 4
    with pytest.raises(ConfigError, match="unknown key method.proxies"):
        load_config(path, ["method.name=ucir"])
    with pytest.raises(ConfigError, match="method.proxies must be >= 1"):
        load_config(path, ["method.proxies=0"])


def test_hash_counts_only_what_can_change_the_results():
    """A switched-off plug-in's options and a SIR head rule for another kind of head leave the
    hash alone; a changed default keeps finished runs' hashes (config.FIRST_DEFAULTS)."""
    from sircil.config import config_from_dict

    def h(**sections):
        return config_from_dict(sections).hash()

    plain = h(method={"name": "finetune"})
    assert h(method={"name": "finetune"}, sir={"enabled": False, "fc": 0.3}, logit_adjustment={"tau": 2.0}) == plain
    assert h(method={"name": "finetune"}, sir={"enabled": True, "fc": 0.3}) != plain
    linear = h(method={"name": "finetune"}, sir={"enabled": True})
    assert h(method={"name": "finetune"}, sir={"enabled": True, "cosine_scale": None, "sigmoid": "margin"}) == linear
    assert h(method={"name": "podnet"}, sir={"enabled": True, "cosine_scale": None}) != h(method={"name": "podnet"}, sir={"enabled": True})
    assert h(method={"name": "icarl"}, sir={"enabled": True, "sigmoid": "margin"}) != h(method={"name": "icarl"}, sir={"enabled": True})


def test_milestones_as_fractions_follow_the_epochs_and_hash_as_the_epochs_they_mean():
    from sircil.training.phase import Phase

    fractions = make_config(fashion_config(train={"epochs": 20, "scheduler": "step", "milestones": [0.7, 0.9]}))
    epochs = make_config(fashion_config(train={"epochs": 20, "scheduler": "step", "milestones": [14, 18]}))
    assert fractions.hash() == epochs.hash()
    short = make_config(fashion_config(train={"epochs": 5, "scheduler": "step", "milestones": [0.6, 0.8]}))
    phase = Phase("p", None, 5, 1.0, None, [], scheduler="step", milestones=short.train.milestones, lr_decay=0.1)
    assert [round(phase.lr_at(e), 6) for e in range(5)] == [1.0, 1.0, 1.0, 0.1, 0.01]
    # a base step with its own epoch count: the fractions mean other epochs there, and so does the hash
    base40 = make_config(fashion_config(train={"epochs": 20, "base_epochs": 40, "scheduler": "step", "milestones": [0.5]}))
    absolute = make_config(fashion_config(train={"epochs": 20, "base_epochs": 40, "scheduler": "step", "milestones": [10]}))
    assert base40.hash() != absolute.hash()
    with pytest.raises(ConfigError, match="all fractions"):
        make_config(fashion_config(train={"epochs": 20, "milestones": [0.5, 15]}))
    with pytest.raises(ConfigError, match="all fractions"):
        make_config(fashion_config(train={"epochs": 20, "milestones": [12.5]}))
