"""The second scenario generator (harness/fieldsim.py): its worlds, archives and truth."""

import json

import geopandas as gpd
import numpy as np

from streamembed.harness import fieldsim, fieldsim_world
from streamembed.harness.alert_scores import CORE_FRACTION
from streamembed.harness.spectral_library import LIBRARY_JSON, build, library
from streamembed.sources.local import discover


def test_the_kept_spectral_library_is_the_one_the_real_scenes_give(shared_data):
    kept = json.loads(LIBRARY_JSON.read_text())
    rebuilt = build(shared_data / "s2" / "eolearn_slovenia_2015_2017")
    assert kept.keys() == rebuilt.keys() == {"forest", "grass", "shrub", "built"}
    for name, spectra in rebuilt.items():
        assert np.allclose(kept[name], spectra, atol=1e-4), name
    forest = library()["forest"]
    ndvi = (forest[:, 7] - forest[:, 3]) / (forest[:, 7] + forest[:, 3])
    assert np.median(ndvi) > 0.7  # real canopy, brought to surface reflectance


def test_the_halves_are_disjoint_and_named():
    assert not set(fieldsim.TUNING_SEEDS) & set(fieldsim.HELD_OUT_SEEDS)
    assert fieldsim.split_of(fieldsim.TUNING_SEEDS[0]) == "tuning"
    assert fieldsim.split_of(fieldsim.HELD_OUT_SEEDS[0]) == "held-out"
    assert fieldsim.split_of(999) == "extra"
    assert fieldsim.seed_of(fieldsim.scenario_name(21)) == 21
    assert fieldsim.seed_of("haze") is None


def test_a_world_is_drawn_from_its_seed_alone_and_events_sit_on_their_cover():
    a, b = fieldsim_world.draw_world(11, 256), fieldsim_world.draw_world(11, 256)
    assert np.array_equal(a.cover, b.cover) and len(a.events) == len(b.events)
    assert [e.start_day for e in a.events] == [e.start_day for e in b.events]
    other = fieldsim_world.draw_world(12, 256)
    assert not np.array_equal(a.cover, other.cover)
    for world in (a, other):
        assert world.events, "a world plants events"
        for ev in world.events:
            _, allowed = fieldsim_world.EVENT_KINDS[ev.name]
            covers = world.cover[ev.mask]
            if ev.name == "flood":
                assert not np.isin(covers, (fieldsim_world.WATER, fieldsim_world.TOWN)).any()
            else:
                assert np.isin(covers, allowed).all()
            assert ev.start_day >= 90  # after a spring of history
        assert world.decline.start_day >= 365 and world.decline.mask.any()
        assert not (world.decline.mask & np.any([e.mask for e in world.events], axis=0)).any()


def test_the_surface_follows_the_seasons_and_the_events():
    world = fieldsim_world.draw_world(13, 256)
    red, nir = 3, 7

    def ndvi(day: int, mask: np.ndarray) -> float:
        s = fieldsim.surface(world, day)
        return float(((s[nir] - s[red]) / (s[nir] + s[red]))[mask].mean())

    crops = world.cover == fieldsim_world.SUMMER_CROP
    assert ndvi(200, crops) > ndvi(30, crops) + 0.3  # green in July, bare in winter
    flood = next(e for e in world.events if e.name == "flood")
    during = fieldsim.surface(world, flood.start_day + 1)
    mndwi = (during[2] - during[10]) / (during[2] + during[10])
    assert mndwi[flood.mask].mean() > 0.5  # open water while it lasts


def test_an_archive_is_read_by_the_local_source_and_its_truth_has_fractions(tmp_path):
    items, truth_path = fieldsim.generate(tmp_path / "w", 12, size=128, days=40, revisit_days=10)
    found, failed = discover(items)
    assert len(found) == 4 and not failed
    assert {a.id[:3] for a in found} == {"S2A", "S2B"}  # the two units alternate
    truth = gpd.read_parquet(truth_path)
    assert set(truth["kind"]) <= {"sudden", "gradual"} and (truth["split"] == "tuning").all()
    assert ((truth["fraction"] > 0) & (truth["fraction"] <= 1)).all()
    world = fieldsim_world.draw_world(12, 128)
    core = truth[truth["fraction"] >= CORE_FRACTION]
    for ev_id, rows in core.groupby("event_id"):
        i = int(str(ev_id).rsplit("-", 1)[1])
        mask = world.events[i].mask if not str(ev_id).startswith("decline") else world.decline.mask
        frac = fieldsim.cell_fractions(mask)
        assert np.allclose(frac[rows["cell_y"], rows["cell_x"]], rows["fraction"])
