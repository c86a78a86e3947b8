"""SAFE products as a source: the real products' metadata XML read as ESA writes it, synthetic
SAFE/JPEG 2000 products (folders and zips) through a real backfill giving the same embeddings
as the same pixels in COGs, and broken products as source failures that stop nothing else."""

from __future__ import annotations

import datetime as dt
import shutil
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio

from streamembed.acquisition import BANDS_L1C
from streamembed.config import Config
from streamembed.harness.fullsize import generate_fullsize
from streamembed.harness.safe_layout import SafeNames, tile_xml
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline
from streamembed.sources.local import discover
from streamembed.sources.safe import read_product

REAL = {
    "02.09": "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159",
    "04.00": "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549",
}


def _real_product(shared_data: Path, root: Path, baseline: str) -> tuple[Path, np.ndarray]:
    """A SAFE folder around a real product's own MTD_MSIL1C.xml, each band file holding that
    band of the real chip (as JPEG 2000, where the MTD says it is)."""
    src = shared_data / "s2" / "ukis_t32upc_l1c"
    name = REAL[baseline]
    product = root / f"{name}.SAFE"
    product.mkdir()
    shutil.copy(src / f"{name}_MTD.xml", product / "MTD_MSIL1C.xml")
    with rasterio.open(src / f"{name}.tif") as chip:
        dn, profile = chip.read(), chip.profile
    files = [el.text for el in ElementTree.parse(product / "MTD_MSIL1C.xml").iter("IMAGE_FILE")]
    assert len(files) == 14  # 13 bands and the true-colour image
    for i, band in enumerate(BANDS_L1C):
        (stem,) = [f for f in files if f and f.endswith(f"_{band}")]
        path = product / f"{stem}.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(
            path, "w", driver="JP2OpenJPEG", width=dn.shape[2], height=dn.shape[1], count=1,
            dtype="uint16", crs=profile["crs"], transform=profile["transform"],
            QUALITY="100", REVERSIBLE="YES", RESOLUTIONS="1",
        ) as dst:  # fmt: skip
            dst.write(dn[i][None])
    granule = product / stem.split("/IMG_DATA")[0]
    t = profile["transform"]
    when = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    (granule / "MTD_TL.xml").write_text(
        tile_xml(SafeNames("L1C", "32UPC", when), 32632, t.c, t.f, dn.shape[2])
    )
    return product, dn


@pytest.mark.parametrize("baseline", ["02.09", "04.00"])
def test_real_product_metadata_gives_time_level_offsets_and_band_files(
    tmp_path, shared_data, baseline
):
    product, dn = _real_product(shared_data, tmp_path, baseline)
    acq = read_product(product)
    assert acq.id == REAL[baseline] and acq.tile == "32UPC" and acq.level == "L1C"
    assert acq.processing_baseline == baseline and acq.epsg == 32632
    assert acq.datetime == dt.datetime(
        *((2020, 4, 6, 10, 15, 59) if baseline == "02.09" else (2022, 6, 15, 10, 15, 59)),
        tzinfo=dt.timezone.utc,
    ) + dt.timedelta(milliseconds=25 if baseline == "04.00" else 24)
    assert sorted(acq.assets) == sorted(BANDS_L1C)  # L1C: no SCL
    # From baseline 04.00 the real MTD carries RADIO_ADD_OFFSET -1000 for every band.
    offset = -0.1 if baseline == "04.00" else 0.0
    for band in BANDS_L1C:
        assert acq.scale_offset(band) == pytest.approx((1e-4, offset))
    for band in ("B02", "B8A", "B10"):
        with rasterio.open(acq.assets[band].href) as src:
            assert np.array_equal(src.read(1), dn[BANDS_L1C.index(band)]), band
    assert acq.cloud_cover is not None and 0 <= acq.cloud_cover <= 100


def test_a_zip_is_read_in_place(tmp_path, shared_data):
    product, dn = _real_product(shared_data, tmp_path, "04.00")
    archive = tmp_path / f"{product.stem}.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # deflated, as some downloads are
        for path in sorted(product.rglob("*")):
            zf.write(path, Path(product.name) / path.relative_to(product))
    shutil.rmtree(product)
    acq = read_product(archive)
    href = acq.assets["B04"].href
    assert href.startswith("/vsizip/") and str(archive) in href
    with rasterio.open(href) as src:
        assert np.array_equal(src.read(1), dn[3])
    assert not any(tmp_path.rglob("*.jp2"))  # nothing was extracted


def _broken_products(folder: Path) -> dict[str, tuple[str, str]]:
    """Four broken copies of the first product in ``folder``: path -> words of its reason."""
    (good,) = sorted(folder.glob("*.SAFE"))[:1]
    cases: dict[str, tuple[str, str]] = {}

    def copy(tag: str) -> Path:
        dst = folder / good.name.replace("_N0511_", f"_N05{tag}_")
        shutil.copytree(good, dst)
        return dst

    missing = copy("91")
    next(missing.rglob("*_B8A_20m.jp2")).unlink()
    cases[str(missing)] = ("B8A", "download it again")
    other = copy("92")
    (other / "MTD_MSIL2A.xml").rename(other / "MTD_MSIL1B.xml")
    cases[str(other)] = ("MTD_MSIL1B.xml", "Level-1C and Level-2A")
    no_granule = copy("93")
    next(no_granule.rglob("MTD_TL.xml")).unlink()
    cases[str(no_granule)] = ("MTD_TL.xml", "download it again")
    truncated = folder / good.name.replace("_N0511_", "_N0594_").replace(".SAFE", ".zip")
    with zipfile.ZipFile(truncated, "w") as zf:
        for path in sorted(good.rglob("*")):
            zf.write(path, Path(good.name) / path.relative_to(good))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    cases[str(truncated)] = ("not a readable zip", "download the product again")
    return cases


def test_broken_products_are_source_failures_naming_the_product(tmp_path):
    items = generate_fullsize(tmp_path, acquisitions=1, tile_px=128, fmt="safe")
    cases = _broken_products(items / "33UWP")
    acqs, failures = discover(items)
    assert [a.id for a in acqs] == [p.stem for p in (items / "33UWP").glob("*_N0511_*.SAFE")]
    reasons = {f.key: f.reason for f in failures}
    assert set(reasons) == set(cases)
    for path, words in cases.items():
        assert path in reasons[path] and "\n" not in reasons[path]
        for w in words:
            assert w in reasons[path], (path, reasons[path])


def _run(items: Path, out: Path, client) -> None:
    cfg = Config().with_overrides(
        **{"source.path": str(items), "output": str(out), "model.arch": "resnet18"}
    )
    pipe = Pipeline(cfg, client)
    try:
        pipe.run(progress=False)
    finally:
        pipe.close()


def test_safe_products_give_the_embeddings_of_the_same_pixels_as_cogs(tmp_path, cluster_client):
    px, seed = 256, 7
    cog = generate_fullsize(tmp_path / "cog", acquisitions=2, tile_px=px, seed=seed)
    safe = generate_fullsize(tmp_path / "safe", acquisitions=2, tile_px=px, seed=seed, fmt="safe")
    # The second product as a download arrives (a zip), and a broken one beside them.
    second = sorted((safe / "33UWP").glob("*.SAFE"))[1]
    from streamembed.harness.safe_layout import zip_product

    zip_product(second)
    truncated = safe / "33UWP" / "S2B_MSIL2A_20240613T100031_N0511_R122_T33UWP_X.zip"
    truncated.write_bytes((safe / "33UWP" / f"{second.stem}.zip").read_bytes()[:5000])
    _run(cog, tmp_path / "out-cog", cluster_client)
    _run(safe, tmp_path / "out-safe", cluster_client)
    with Ledger(tmp_path / "out-safe" / "ledger.sqlite") as ledger:
        states = ledger.states()
        failures = {k: reason for k, _, reason in ledger.source_failures()}
    assert sorted(states.values()) == [State.APPLIED, State.APPLIED]
    assert str(truncated) in failures and "not a readable zip" in failures[str(truncated)]
    a = EmbeddingStore(tmp_path / "out-cog" / "embeddings.zarr")
    b = EmbeddingStore(tmp_path / "out-safe" / "embeddings.zarr")
    for acq_id in states:
        x, y = a.read("33UWP", acq_id), b.read("33UWP", acq_id)
        # JPEG 2000 here is lossless: the same DN, so the same cells bit for bit.
        assert np.array_equal(x.embedding, y.embedding)
        assert np.array_equal(x.clear, y.clear)
        assert float(x.clear.mean()) > 0
