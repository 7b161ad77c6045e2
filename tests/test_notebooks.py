"""The analysis notebooks run on a CPU with small parameters (notebooks/run.py's ``small`` preset),
write their figures and HTML, and their key numbers are sane. Needs the dev extra (jupytext,
nbclient, ipykernel, nbconvert); skipped without it."""

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest

for mod in ("jupytext", "nbclient", "nbformat", "nbconvert", "ipykernel"):
    pytest.importorskip(mod, reason=f"{mod} (the dev extra: pip install -e '.[dev]') runs the notebooks")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def runner():
    spec = importlib.util.spec_from_file_location("notebooks_run", ROOT / "notebooks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(name, out, params):
    t0 = time.time()
    res = runner().execute(name, out, params)
    print(f"{name} {params.get('DEMO') or ''}: {time.time() - t0:.1f} s wall, {res['cpu_seconds']} s CPU")
    html = Path(res["html"]).read_text(encoding="utf-8")
    assert "Traceback" not in html and html.count("data:image/png;base64") >= 3  # figures embedded
    results = json.loads((Path(res["figures"]) / "results.json").read_text())
    for path in results["figures"].values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    return results


def test_attention_patterns_notebook(tmp_path):
    r = run("attention_patterns", tmp_path, runner().PRESETS["small"]["attention_patterns"])
    assert set(r["figures"]) >= {"primitives", "integration_strided", "integration_fixed", "layout_openai",
                                 "reachability", "tiles_zoom", "tiles_real", "scaling"}
    conn = {row["config"]: row for row in r["connectivity"]}
    assert conn["strided interleaved"]["ok"] and conn["strided merged"]["ok"] and conn["fixed merged"]["ok"]
    fx = conn["fixed interleaved"]
    assert [w["connects"] for w in fx["windows"]] == [True, False] and fx["stack_ok"]
    assert not conn["local alone"]["ok"] and not conn["local alone"]["stack_ok"]
    tiles = r["tiles_real"]
    for pattern in ("strided", "fixed"):
        t = tiles[pattern]
        assert t["naive"]["run"] == tiles["dense"]["run"]  # the naive mask skips no causal tile
        assert sum(g["run"] for g in t["run"]) < t["naive"]["run"] / 2  # as run: far fewer tiles
        assert t["pairs"] <= t["run_pairs"] < t["naive_run_pairs"]
    strided = [row for row in r["scaling"] if row["pattern"] == "strided"]
    assert all(a["fraction_of_dense"] > b["fraction_of_dense"] for a, b in zip(strided, strided[1:]))


def check_maps(r):
    L = len(r["labels"])
    assert abs(r["row_sum_min"] - 1) < 1e-4 and abs(r["row_sum_max"] - 1) < 1e-4
    for rr in range(L):
        for h, lab in enumerate(r["labels"][rr]):
            ent, uni, dist = r["entropy"][rr][h], r["uniform_entropy"][rr][h], r["distance"][rr][h]
            assert 0 <= ent <= uni + 1e-6  # no head beats uniform over its allowed keys
            assert dist >= 0
            if lab == "local":
                assert r["mass_within_stride"][rr][h] == pytest.approx(1.0, abs=1e-5)
                assert dist < r["stride"]
    assert math.isfinite(r["bits_per_token"]) and all(math.isfinite(x) for row in r["ablation"] for x in row)
    assert set(r["figures"]) >= {"maps_query0", "head_stats", "work_division"}


def test_attention_maps_notebook_trains_and_draws_text(tmp_path):
    r = run("attention_maps", tmp_path, runner().PRESETS["small"]["attention_maps"])
    assert r["modality"] == "text" and r["training"]["steps"] == 40
    assert r["training"]["val_bpd_end"] < r["training"]["val_bpd_start"] - 1  # it learned something
    check_maps(r)


def test_attention_maps_notebook_image_demo(tmp_path):
    # a random model on synthetic images (the audio drawing path is tested in tests/analysis/test_plots.py)
    r = run("attention_maps", tmp_path, {"DEMO": "image", "DEMO_SHAPE": [8, 8, 3]})
    assert r["modality"] == "image" and r["shape"] == [8, 8, 3]
    check_maps(r)
