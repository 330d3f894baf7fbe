"""Recipe parsing and validation: the error corpus, overrides, resolution."""

from __future__ import annotations

import tomllib

import pytest

from milzoo.errors import RecipeError
from milzoo.recipe import apply_overrides, load_recipe, validate_recipe

GOOD = """
name = "ok"
[data]
name = "classic"
dataset = "musk1"
[encoder]
name = "mlp"
dims = [32]
[pooling]
name = "abmil"
gated = true
[[loss]]
name = "bag_ce"
[train]
epochs = 2
"""


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path, text, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), overrides)
    return info.value.problems


def test_good_recipe_resolves_defaults(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    d = r.to_dict()
    given_and_defaults = {"name": "abmil", "attn_hidden": 128, "gated": True, "dropout": 0.0, "head": "softmax"}
    assert {k: d["pooling"][k] for k in given_and_defaults} == given_and_defaults
    assert d["train"]["batch_size"] == 1 and d["optim"]["name"] == "adam"
    # the resolved TOML parses back to the same recipe
    again = validate_recipe(tomllib.loads(r.to_toml()))
    assert again.to_dict() == d


def test_syntax_error(tmp_path):
    (msg,) = problems(tmp_path, "name = \n[data")
    assert "TOML syntax error" in msg


def test_unknown_keys_with_suggestions_everywhere(tmp_path):
    text = GOOD.replace("epochs = 2", "epochs = 2\nepoch = 3").replace("gated = true", "gatd = true")
    text = "sed = 1\n" + text
    ps = problems(tmp_path, text)
    assert any(p.startswith("train.epoch:") and "'epochs'" in p for p in ps)
    assert any(p.startswith("pooling.gatd:") and "'gated'" in p for p in ps)
    assert any(p.startswith("sed:") and "'seed'" in p for p in ps)


def test_wrong_type_and_out_of_range_reported_together(tmp_path):
    text = GOOD.replace("epochs = 2", "epochs = -1\nbatch_size = 'many'").replace("dims = [32]", "dims = [0]")
    ps = problems(tmp_path, text)
    paths = sorted(p.split(":")[0] for p in ps)
    assert paths == ["encoder.dims.0", "train.batch_size", "train.epochs"]
    # batch_size is `int > 0 | "auto"`: one problem that gives both members' reasons
    (bs,) = [p for p in ps if p.startswith("train.batch_size")]
    assert "valid integer" in bs and "'auto'" in bs


def test_unknown_component_suggests(tmp_path):
    ps = problems(tmp_path, GOOD.replace('name = "abmil"', 'name = "abmll"'))
    assert len(ps) == 1 and "unknown pooling 'abmll'" in ps[0] and "Did you mean 'abmil'" in ps[0]


def test_unknown_loss_index_in_path(tmp_path):
    ps = problems(tmp_path, GOOD + '[[loss]]\nname = "nope"\n')
    assert ps[0].startswith("loss.1.name: unknown loss 'nope'")


def test_component_validator_message(tmp_path):
    ps = problems(tmp_path, GOOD.replace('dataset = "musk1"', 'dataset = "musk1"\npath = "x.csv"'))
    assert ps and ps[0].startswith("data:") and "exactly one" in ps[0]


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "absent.toml")
    assert "file not found" in str(info.value)


def test_overrides_apply_and_parse_toml_values(tmp_path):
    r = load_recipe(write(tmp_path, GOOD), ["train.epochs=7", "pooling.gated=false", "encoder.dims=[8, 4]",
                                            "loss.0.label_smoothing=0.1", "name=renamed"])
    d = r.to_dict()
    assert d["train"]["epochs"] == 7 and d["pooling"]["gated"] is False and d["encoder"]["dims"] == [8, 4]
    assert d["loss"][0]["label_smoothing"] == 0.1 and d["name"] == "renamed"


def test_bad_overrides(tmp_path):
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides({}, ["noequals"])
    with pytest.raises(RecipeError, match="no list item"):
        apply_overrides({"loss": [{}]}, ["loss.3=1"])
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe(write(tmp_path, GOOD), ["train.epocs=3"])


def test_every_shipped_recipe_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(root.rglob("*.toml"))
    assert files, "no recipes shipped"
    for f in files:
        load_recipe(f)  # raises RecipeError listing every problem


@pytest.mark.parametrize("override, match", [
    ("train..epochs=3", "empty part"),           # was silently read as train.epochs
    (".train.epochs=3", "empty part"),
    ("train.epochs.=3", "empty part"),
    ("=3", "empty key"),
    ("train.epochs=", "the value is empty"),    # was the string ''
    ("encoder.dims=[8,", "not valid TOML"),     # was the string '[8,'
    ('name="unterminated', "not valid TOML"),
    ("pooling={name=", "not valid TOML"),
])
def test_malformed_overrides_are_errors_not_strings(tmp_path, override, match):
    found = problems(tmp_path, GOOD, [override])
    assert len(found) == 1 and match in found[0] and repr(override) in found[0], found


def test_bare_words_stay_strings(tmp_path):
    r = load_recipe(write(tmp_path, GOOD), ["data.dataset=musk2", "name=my run", "description=s3://b/x.csv"])
    assert (r.root.data.name, r.components["data"].dataset, r.root.name) == ("classic", "musk2", "my run")


@pytest.mark.parametrize("override, match", [
    ("train.epochs=100000000000000000000000", "outside the 64-bit range"),   # trained "forever" before
    ("encoder.dims=[100000000000000000000000]", "encoder.dims.0: an integer of 24 digits"),
    ("train.epochs=2000000", "less than or equal to 1000000"),
    ("train.num_workers=100000", "less than or equal to 256"),                # forked 100000 workers before
    ("train.threads=100000000000000000000000", "outside the 64-bit range"),  # torch overflow traceback before
    ("protocol.repeats=100000", "less than or equal to 1000"),
    ("seed=-1", "greater than or equal to 0"),                              # numpy traceback before
    ("seed=4294967296", "less than or equal to 2147483647"),
    ("optim.lr=inf", "optim.lr: inf is not a usable value"),                # diverged at step 1 before
    ("pooling.attn_hidden=nan", "pooling.attn_hidden: nan is not a usable value"),
])
def test_absurd_values_are_recipe_problems(tmp_path, override, match):
    found = problems(tmp_path, GOOD, [override])
    assert any(match in p for p in found), found


def test_hostile_toml_files_are_recipe_errors(tmp_path):
    found = problems(tmp_path, GOOD.replace("epochs = 2", "epochs = " + "9" * 5000))
    assert "cannot be read" in found[0]
    found = problems(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in found[0]
    with pytest.raises(RecipeError, match="a recipe is a TOML table, not list"):
        validate_recipe([1, 2], "<list>")  # the Python API with a non-table
