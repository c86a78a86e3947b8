from pathlib import Path

import pytest

from streamembed.config import Config, ConfigError, load_config, load_section
from streamembed.harness.bench import BenchConfig
from streamembed.harness.demo import DemoConfig

SHIPPED = Path(__file__).parents[1] / "config.yaml"


def test_shipped_config_equals_defaults():
    assert load_config(SHIPPED, environ={}) == Config()
    assert load_section(SHIPPED, "demo", DemoConfig, environ={}) == DemoConfig()
    assert load_section(SHIPPED, "bench", BenchConfig, environ={}) == BenchConfig()


def test_harness_sections_are_apart_from_the_runtime(tmp_path):
    """demo and bench share the file but not the runtime Config; their errors name them."""
    assert "demo" not in Config.model_fields and "bench" not in Config.model_fields
    p = tmp_path / "profile.yaml"
    p.write_text("stats:\n  threshold: 4\nbench:\n  label: x\n  tile_px: 8\n")
    assert load_config(p, environ={}).stats.threshold == 4
    with pytest.raises(ConfigError, match=r"bench\.tile_px"):
        load_section(p, "bench", BenchConfig, environ={})
    p.write_text("bench:\n  lable: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'bench\.lable'.*label"):
        load_section(p, "bench", BenchConfig, environ={})
    env = {"STREAMEMBED__DEMO__TILE_PX": "256"}
    assert load_section(None, "demo", DemoConfig, environ=env).tile_px == 256
    p.write_text("dmeo:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'dmeo'; valid keys here: .*demo"):
        load_config(p, environ={})


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
