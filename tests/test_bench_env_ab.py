"""bench/env_ab.py on the CPU with a fake timer: the switch is set for each arm, values alternate
round by round, outputs are compared with the first value's, the summary takes medians, and the
variable is restored."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import one_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ab():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_env_ab", ROOT / "bench" / "env_ab.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_arguments(ab):
    a = ab.parse_args(["--env", "SPARSE_TRANSFORMER_TRITON_FULL_TILES"])
    assert (a.values, a.shapes, a.patterns, a.rounds, a.tag) == (["0", "1"], [(16384, 64), (65536, 64), (16384, 32)],
                                                                 ["local", "stride", "strided"], 2, "full-tiles")
    for bad in (["--env", "X", "--shapes", "16k"], ["--env", "X", "--patterns", "nope"], ["--env", "X", "--values", "1"], [],
                ["--env", "SPARSE_TRANSFORMER_TRITON_CONFIGS"]):
        with pytest.raises(SystemExit) as e:
            ab.parse_args(bad)
        assert e.value.code == 2


def test_values_alternate_and_the_switch_is_set_per_arm(ab, tmp_path, monkeypatch):
    monkeypatch.setenv("AB_TEST_SWITCH", "before")
    order = []

    def timer(fn):  # the timing of an arm depends on the switch it ran under
        fn()
        order.append(os.environ["AB_TEST_SWITCH"])
        return [1.0 + float(os.environ["AB_TEST_SWITCH"]) + 0.25 * (len(order) % 2)]

    env = ab.A.Env(device="cpu", timer=timer)
    res = ab.main(["--env", "AB_TEST_SWITCH", "--values", "0,2", "--shapes", "64:16", "--patterns", "local,stride",
                   "--backend", "blocked", "--rounds", "2", "--out", str(tmp_path)], env=env, tokens=256, heads=2)
    assert os.environ["AB_TEST_SWITCH"] == "before"
    recs = res["records"]
    assert [(r["pattern"], r["value"], r["round"]) for r in recs] == [
        (p, v, r) for p in ("local", "stride") for r, vs in ((0, "02"), (1, "20")) for v in vs]  # A B, then B A
    assert order == ["0", "0", "2", "2", "2", "2", "0", "0"] * 2  # fwd then fwd+bwd timed under each value
    assert all(r["out_rel_diff"] == 0.0 for r in recs)  # blocked does not read the switch: the same outputs
    rows = {r["pattern"]: r for r in res["summary"]}
    assert rows["local"]["fwd_ms[0]"] == 1.25 and rows["local"]["fwdbwd_ms[2]"] == 3.0
    assert rows["local"]["fwd_graph_ms[0]"] is None  # no CUDA graph on a CPU
    assert json.loads((tmp_path / "ab-ab-test-switch-cpu.json").read_text()) == res
