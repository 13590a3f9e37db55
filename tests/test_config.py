"""Recipe loading: strict keys, types and ranges; precedence; per_norm blocks."""
import pytest
import yaml

from normtrain import config
from normtrain.errors import UsageError


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_and_builtin_recipe_load():
    r = config.load("digits-mlp")
    assert r.model.name == "mlp" and r.data.source == "digits"
    assert r.run.name == "digits-mlp-bn" and r.run.out.endswith("digits-mlp-bn")


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(UsageError, match=r"r\.yaml.*optim\.lrr.*lr, momentum"):
        config.load(path)


def test_unknown_section(tmp_path):
    with pytest.raises(UsageError, match="unknown key 'optimizer'"):
        config.load(write(tmp_path, "optimizer: {lr: 1}\n"))


@pytest.mark.parametrize("text,match", [
    ("optim: {lr: fast}", "optim.lr: expected a number"),
    ("train: {epochs: [1]}", "train.epochs: expected a number"),
    ("data: {batch_size: 1.5}", "data.batch_size: expected an integer"),
    ("log: {progress: 1}", "log.progress: expected true or false"),
    ("optim: {lr: -1}", r"optim\.lr: -1\.0 is out of range"),
    ("train: {amp: fp8}", "train.amp: 'fp8' is not one of: auto, off, bf16, fp16"),
    ("norm: {momentum: 2}", "norm.momentum must be in"),
    ("schedule: {name: onecycle}", "max_lr: onecycle needs max_lr > 0"),
    ("data: {augment: jitter}", "data.augment: 'jitter' is not one of"),
    ("model: {drop_path: 1.0}", r"model\.drop_path: 1\.0 is out of range \(must be >= 0\.0 and < 1\.0\)"),
    ("model: {drop_path: none}", "model.drop_path: expected a number"),
    ("train: {grad_clip_mode: adaptive}", "train.grad_clip_mode: 'adaptive' is not one of: norm, agc"),
    ("train: {grad_clip_mode: agc}", "train.grad_clip_mode: agc needs grad_clip > 0"),
    ("norm: {residual: fixup}", "norm.residual: 'fixup' is not one of: none, sqrt2, rescale, depth, skipinit"),
    ("norm: {residual_depth_power: 0}", "norm.residual_depth_power must be > 0"),
    ("norm: {brn_r_max: 0.5}", "norm.brn_r_max must be >= 1"),
    ("norm: {brn_d_max: -1}", "norm.brn_d_max must be >= 0"),
    ("norm: {brn_relax_start: 10, brn_d_max_at: 5}", "norm.brn_r_max_at and brn_d_max_at must be >= brn_relax_start"),
    ("norm: {brn_relax_start: 1.5}", "norm.brn_relax_start: expected an integer"),
    ("norm: {frn_learn_eps: 1}", "norm.frn_learn_eps: expected true or false"),
])
def test_wrong_types_and_ranges(tmp_path, text, match):
    with pytest.raises(UsageError, match=match) as e:
        config.load(write(tmp_path, text))
    assert "r.yaml" in str(e.value)


def test_int_widens_to_float_but_not_bool(tmp_path):
    r = config.load(write(tmp_path, "optim: {lr: 1}"))
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)
    with pytest.raises(UsageError):
        config.load(write(tmp_path, "optim: {lr: true}"))


def test_set_overrides_and_parse():
    r = config.load("digits-mlp", [config.parse_set("optim.lr=0.02"), config.parse_set("train.epochs=2"),
                                   config.parse_set("model.options={widths: [8]}")])
    assert r.optim.lr == 0.02 and r.train.epochs == 2.0 and r.model.options == {"widths": [8]}
    for bad in ("optim.lr", "=3", "optim.lr=[1,"):
        with pytest.raises(UsageError):
            config.load("digits-mlp", [config.parse_set(bad)])
    with pytest.raises(UsageError, match="--set: optim.lr: expected a number"):
        config.load("digits-mlp", [("optim.lr", "abc")])


def test_per_norm_applies_for_chosen_method_and_set_wins(tmp_path):
    path = write(tmp_path, yaml.safe_dump({
        "norm": {"name": "bn"}, "optim": {"lr": 0.1, "weight_decay": 0.002},
        "per_norm": {"none": {"optim.weight_decay": 0.0, "schedule.final_lr": 1e-5}}}))
    assert config.load(path).optim.weight_decay == 0.002
    r = config.load(path, [("norm.name", "none")])
    assert r.optim.weight_decay == 0.0 and r.schedule.final_lr == 1e-5
    r = config.load(path, [("norm.name", "none"), ("optim.weight_decay", 0.5)])
    assert r.optim.weight_decay == 0.5


def test_per_norm_keys_are_checked(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"per_norm": {"bn": {"optim.nope": 1}}}))
    with pytest.raises(UsageError, match=r"per_norm\.bn.*optim\.nope"):
        config.load(path)


def test_unknown_recipe_lists_choices():
    with pytest.raises(UsageError, match="unknown recipe 'zzz'; choose from: .*digits-mlp"):
        config.load("zzz")


def test_dump_round_trip(tmp_path):
    r = config.load("digits-mlp", [("optim.lr", 0.3)])
    p = tmp_path / "resolved.yaml"
    p.write_text(config.dump(r))
    assert config.load(str(p)).to_dict() == {**r.to_dict(), "per_norm": {}}


def test_every_key_documented():
    rows = config.field_docs()
    missing = [k for k, _, _, doc in rows if not doc]
    assert not missing, missing


def test_scientific_notation_is_a_number(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; recipes and --set must still accept it.
    assert config.load(write(tmp_path, "optim: {lr: 1e-4}")).optim.lr == 1e-4
    assert config.load("digits-mlp", [config.parse_set("optim.lr=5e3")]).optim.lr == 5000.0
    with pytest.raises(UsageError):
        config.load(write(tmp_path, "optim: {lr: 1e}"))


def test_dumped_recipe_reproduces_a_set_that_per_norm_also_sets(tmp_path):
    """The saved recipe.yaml reloads to the same values even where --set overrode a per_norm key."""
    r = config.load("cifar10-nv", [("norm.name", "wn"), ("schedule.final_lr", 0.5)])
    p = tmp_path / "recipe.yaml"
    p.write_text(config.dump(r))
    again = config.load(str(p))
    assert again.schedule.final_lr == 0.5 and again.optim.weight_decay == r.optim.weight_decay
    assert {k: v for k, v in again.to_dict().items() if k != "per_norm"} == \
        {k: v for k, v in r.to_dict().items() if k != "per_norm"}


def test_synthetic_classes_set_on_the_command_line_win_over_the_recipes_real_count():
    """`--data synthetic --set data.synthetic_classes=10` on an ImageNet recipe: 10 classes, the network too."""
    r = config.load("resnet50-imagenet", [("data.source", "synthetic"), ("data.synthetic_classes", 10)])
    assert r.data.num_classes == 10 and r.data.synthetic_classes == 10
    assert config.load("resnet50-imagenet", [("data.source", "synthetic")]).data.synthetic_classes == 1000
    with pytest.raises(UsageError, match="differs from data.num_classes"):
        config.load("resnet50-imagenet", [("data.source", "synthetic"), ("data.synthetic_classes", 10),
                                          ("data.num_classes", 100)])
    reloaded = config.from_dict(r.to_dict(), "recipe.yaml")  # a resumed run keeps the same count
    assert reloaded.data.num_classes == reloaded.data.synthetic_classes == 10
