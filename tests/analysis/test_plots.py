"""analysis.plots: every drawing runs and saves a PNG; numbers save as JSON."""

import json
from pathlib import Path

import matplotlib
import pytest
import torch

from sparse_transformer import analysis as A
from sparse_transformer.attention import pattern_mask, stack_masks
from tests.analysis.helpers import heads_of

matplotlib.use("Agg")  # pyplot is imported lazily by the drawing functions


@pytest.mark.parametrize("modality,shape", [("image", (6, 6, 3)), ("image", (6, 6, 1)), ("audio", (8, 8)),
                                            ("text", (4, 16))])
def test_plot_attention_every_modality(modality, shape, tmp_path):
    net = A.random_model(shape)
    idx = A.synthetic_examples(modality, shape)
    q = A.default_queries(modality, shape, 1)[0]
    maps = A.attention_maps(net, idx, [q])
    labels = [A.head_labels(h) for h in A.model_heads(net)]
    fig = A.plot_attention(modality, idx[0], maps[:, 0, :, 0], q, shape, labels=labels)
    assert len(fig.axes) >= 4
    path = A.save_figure(fig, tmp_path / "m" / f"{modality}.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pattern_drawings(tmp_path):
    import matplotlib.pyplot as plt

    fig, info = A.plot_tile_layouts({"s": heads_of("strided", l=32)[0], "f": heads_of("fixed", l=32, c=8)[0]}, 1024,
                                    overlay=True)
    assert [g["run"] for g in info["s"]["run"]] == [15, 32] and [g["run"] for g in info["f"]["run"]] == [20]
    figs = [
        fig,
        A.plot_masks({"a": pattern_mask("local", 16, 4), "b": pattern_mask("stride", 16, 4)}),
        A.plot_reach({"w": A.reach_windows(stack_masks("strided", 16, 4, 2))[0][1]}),
        A.plot_scaling(A.scaling_table(["dense", "strided"], [64, 256], tile_max_n=64)),
    ]
    net = A.random_model((4, 8))
    idx = A.synthetic_examples("text", (4, 8), count=2)
    rows = A.stat_rows(32)
    maps = A.attention_maps(net, idx, rows)
    heads = A.model_heads(net)
    labels = [A.head_labels(h) for h in heads]
    figs.append(A.plot_head_stats(A.head_stats(maps, rows, heads), labels))
    edges = [0, 1, 2, 4, 8, 16, 32]
    mass, ml = A.part_mass(maps, heads, rows)
    figs.append(A.plot_work_division(A.distance_profile(maps, rows, edges), edges, A.ablate_heads(net, idx)[1], labels,
                                     8, mass=mass, mass_labels=ml))
    for k, f in enumerate(figs):
        assert A.save_figure(f, tmp_path / f"{k}.png")
    plt.close("all")


def test_save_results_handles_tensors_and_nan(tmp_path):
    path = A.save_results({"t": torch.tensor([1.0, float("nan")]), "x": {"y": (1, 2)}}, tmp_path / "r.json")
    assert json.loads(Path(path).read_text()) == {"t": [1.0, None], "x": {"y": [1, 2]}}
