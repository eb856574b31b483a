"""Config loading: unknown keys, wrong types and bad values name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_mtl.config import load_config
from recsys_mtl.errors import UserError
from tests.conftest import write

GOOD = "name: t\ndata:\n  format: synthetic\nsplit:\n  strategy: random\n  test_fraction: 0.2\n"


def test_a_valid_file_loads_into_frozen_sections(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", GOOD))
    assert cfg.split.test_fraction == 0.2
    with pytest.raises(Exception, match="frozen"):
        cfg.split.seed = 3  # type: ignore[misc]


def test_unknown_key_names_file_line_and_dotted_key(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD + "  test_fractoin: 0.3\n")
    with pytest.raises(UserError, match=r"c\.yaml:7: split\.test_fractoin: unknown key"):
        load_config(path)


def test_out_of_range_value_names_the_key_and_the_value(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD.replace("0.2", "1.5"))
    with pytest.raises(
        UserError, match=r"c\.yaml:6: split\.test_fraction: .*less than 1 \(got 1\.5\)"
    ):
        load_config(path)


def test_wrong_type_is_reported(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD + "train:\n  epochs: many\n")
    with pytest.raises(UserError, match=r"c\.yaml:8: train\.epochs: .*integer"):
        load_config(path)


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD)
    cfg = load_config(path, ["split.seed=7", "tasks=[rating, like]", "data.synthetic.users=50"])
    assert (cfg.split.seed, cfg.tasks, cfg.data.synthetic.users) == (7, ["rating", "like"], 50)
    with pytest.raises(UserError, match=r"--set split\.seed: split\.seed: .*integer"):
        load_config(path, ["split.seed=abc"])
    with pytest.raises(UserError, match=r"--set split\.sede: split\.sede: unknown key"):
        load_config(path, ["split.sede=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_config(path, ["split.seed"])


def test_unknown_task_and_strategy_list_the_known_ones(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD + "tasks: [rating, clicks]\n")
    with pytest.raises(UserError, match="unknown task 'clicks'; known: rating, interaction, like"):
        load_config(path)
    path = write(tmp_path / "c.yaml", GOOD.replace("random", "by_magic"))
    with pytest.raises(UserError, match=r"c\.yaml:5: split\.strategy: Input should be 'random'"):
        load_config(path)


def test_predefined_split_requires_both_files(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD.replace("random", "predefined"))
    with pytest.raises(UserError, match=r"needs split\.train and split\.test"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path / "c.yaml", "data:\n  format: [unclosed\n")
    with pytest.raises(UserError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_the_package_exports_the_schema_and_its_submodules_import_no_parent():
    import recsys_mtl.config as config

    names = {
        "ColdStartConfig", "ColumnsConfig", "DataConfig", "EvaluateConfig", "FeaturesConfig",
        "MetaConfig", "MetaLearnerConfig", "ModelConfig", "ParamSpace", "RunConfig",
        "SplitConfig", "SyntheticConfig", "TrackingConfig", "TrainConfig", "TuneConfig",
        "WeightingConfig", "flatten", "load_config", "parse_overrides",
        "KNOWN_TASKS", "DATA_FORMATS", "TUNE_SAMPLERS", "TUNE_PRUNERS",
    }  # fmt: skip
    assert names <= set(config.__all__) and all(hasattr(config, n) for n in config.__all__)
    package = Path(config.__file__).parent
    for module in package.glob("*.py"):
        text = module.read_text()
        assert "from recsys_mtl.config import" not in text, f"{module.name} imports the package"
        assert "import recsys_mtl.config\n" not in text, f"{module.name} imports the package"


def test_flatten_names_nested_keys_with_dots(tmp_path):
    from recsys_mtl.config import flatten

    flat = flatten(load_config(write(tmp_path / "c.yaml", GOOD)))
    assert flat["split.test_fraction"] == 0.2 and flat["model.params"] == "{}"
    assert flat["tasks"] == "rating" and flat["tune"] is None


LOG = "data:\n  path: log.csv\n"


@pytest.mark.parametrize(
    ("value", "separator"),
    [("tab", "\t"), ("TAB", "\t"), ("\\t", "\t"), ("space", " "), ("whitespace", "whitespace"),
     (";", ";"), ("'|'", "|")],
)  # fmt: skip
def test_separator_names_spare_the_shell_quoting(tmp_path, value, separator):
    cfg = load_config(write(tmp_path / "c.yaml", LOG), [f"data.separator={value}"])
    assert cfg.data.separator == separator


def test_a_null_or_long_separator_is_one_line_naming_the_fix(tmp_path):
    path = write(tmp_path / "c.yaml", LOG)
    with pytest.raises(UserError, match=r"--set data\.separator: .*null.*write space, tab or"):
        load_config(path, ["data.separator= "])  # what the shell passes for ' '
    with pytest.raises(UserError, match=r"d\.yaml:3: data\.separator: .*null"):
        load_config(write(tmp_path / "d.yaml", LOG + "  separator:\n"))
    with pytest.raises(UserError, match="expected one character, or tab, space or whitespace"):
        load_config(path, ["data.separator=;;"])


def test_ts_none_and_null_mean_row_order_and_columns_take_positions(tmp_path):
    for text in ("none", "None", "null", "~"):
        path = write(tmp_path / "c.yaml", LOG + f"  columns:\n    ts: {text}\n")
        assert load_config(path).data.columns.ts is None
    path = write(
        tmp_path / "c.yaml", LOG + "  header: false\n  columns: {user_id: 2, item_id: 0}\n"
    )
    cfg = load_config(path)
    assert (cfg.data.header, cfg.data.columns.user_id, cfg.data.columns.item_id) == (False, 2, 0)
    with pytest.raises(UserError, match=r"data\.columns\.rating: a column position counts from 0"):
        load_config(path, ["data.columns.rating=-1"])
    with pytest.raises(UserError, match=r"data\.columns\.rating: a column is a name or a 0-based"):
        load_config(path, ["data.columns.rating=true"])


def test_rating_scale_takes_auto_and_names_what_it_expects(tmp_path):
    path = write(tmp_path / "c.yaml", LOG)
    assert load_config(path, ["data.rating_scale=auto"]).data.rating_scale == "auto"
    assert load_config(path, ["data.rating_scale=[0.5, 4]"]).data.rating_scale == (0.5, 4.0)
    for bad in ("automatic", "[1]", "[a, b]", "5"):
        with pytest.raises(UserError) as err:
            load_config(path, [f"data.rating_scale={bad}"])
        assert str(err.value).startswith(
            "--set data.rating_scale: data.rating_scale: expected [low, high] (two numbers), "
            "auto or null"
        )
        assert ";" not in str(err.value)  # one clause, not one per member of the union
    with pytest.raises(UserError, match="low must be below high"):
        load_config(path, ["data.rating_scale=[4, 1]"])
