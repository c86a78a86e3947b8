from pathlib import Path

import pytest

from streamembed.config import Config, ConfigError, load_config


def test_shipped_config_equals_defaults():
    assert load_config(Path(__file__).parents[1] / "config.yaml", environ={}) == Config()


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("stats:\n  treshold: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert "stats.treshold" in str(err.value)
    assert "threshold" in str(err.value)  # the valid keys are listed as the fix


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("ingest:\n  window: 250\n")
    with pytest.raises(ConfigError, match=r"ingest.window=250 must be a non-negative multiple"):
        load_config(p, environ={})


def test_unknown_band_is_named(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("model:\n  bands: [B01, B02, B99]\n")
    with pytest.raises(ConfigError, match="B99"):
        load_config(p, environ={})


def test_env_override_and_cli_override(tmp_path):
    cfg = load_config(None, environ={"STREAMEMBED__CLUSTER__N_WORKERS": "3"})
    assert cfg.cluster.n_workers == 3
    cfg2 = cfg.with_overrides(**{"source.path": str(tmp_path), "output": "out2"})
    assert (
        cfg2.source.path == str(tmp_path) and cfg2.output == "out2" and cfg2.cluster.n_workers == 3
    )


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_tile_names_follow_the_same_mgrs_rule_as_item_parsing():
    """Latitude bands and 100 km squares have no I or O: the config refuses what parsing would
    never produce, so a filter cannot silently match nothing."""
    cfg = Config().with_overrides(**{"source.tiles": ["T33UWP", "mgrs-32upc"]})
    assert cfg.source.tiles == ("33UWP", "32UPC")
    for bad in ("33UWO", "33IWP", "3UWP"):
        with pytest.raises(ConfigError):
            Config().with_overrides(**{"source.tiles": [bad]})
