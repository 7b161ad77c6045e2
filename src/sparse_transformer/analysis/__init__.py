"""Analysis for the notebooks (``notebooks/``): what the patterns allow, what the kernels run, and
what a trained model learned. The notebooks only call these functions and show their figures.

- ``geometry``  masks of a model's layers and heads (``layer_masks``, ``integration_panels``),
                two-step reach (``reach_windows``, ``connectivity_table``), attended pairs and
                FLOPs vs n (``keys_per_query``, ``pair_count``; closed forms checked against masks);
- ``tiles``     the TILE x TILE tiles a kernel computes: as the ``flex`` backend's own plans run
                them (``run_layouts``), the naive natural-order mask (``naive_layout``), dense
                (``dense_tiles``), and their cost vs n (``scaling_table``);
- ``heads``     a model's attention maps of chosen query rows (``attention_maps``), entropy and
                distance per head, mass by distance and by part, head ablation;
- ``examples``  a run's own data or synthetic images, audio and text, and a small random model;
- ``plots``     the drawings (matplotlib; each returns a Figure) and saving figures and numbers.

Conventions: "allowed" means the pattern's mask; positions of an image are raster order with the
channels interleaved (n = H·W·C); audio tokens are 8-bit mu-law (``sparse_transformer.media``).
"""

from .examples import default_queries, load_examples, modality_of, random_model, stat_rows, synthetic_examples
from .geometry import (
    attention_flops,
    connectivity_table,
    head_labels,
    integration_panels,
    keys_per_query,
    layer_labels,
    layer_masks,
    pair_count,
    paper_stride,
    reach_image,
    reach_windows,
    scaling_parts,
)
from .heads import (
    ablate_heads,
    allowed_rows,
    attention_maps,
    bits_per_token,
    distance_profile,
    entropy_bits,
    head_stats,
    mean_distance,
    model_heads,
    part_mass,
)
from .plots import (
    draw_tiles,
    plot_attention,
    plot_audio_attention,
    plot_head_stats,
    plot_image_attention,
    plot_masks,
    plot_reach,
    plot_scaling,
    plot_text_attention,
    plot_tile_layouts,
    plot_work_division,
    save_figure,
    save_results,
    tile_legend,
)
from .tiles import (
    FULL,
    PARTIAL,
    SKIPPED,
    TILE,
    as_allowed,
    call_mask,
    candidate_keys,
    classify_tiles,
    dense_tiles,
    naive_layout,
    run_layouts,
    scaling_table,
    tile_counts,
    tile_stats,
)

__all__ = [
    "FULL",
    "PARTIAL",
    "SKIPPED",
    "TILE",
    "ablate_heads",
    "allowed_rows",
    "as_allowed",
    "attention_flops",
    "attention_maps",
    "bits_per_token",
    "call_mask",
    "candidate_keys",
    "classify_tiles",
    "connectivity_table",
    "default_queries",
    "dense_tiles",
    "distance_profile",
    "draw_tiles",
    "entropy_bits",
    "head_labels",
    "head_stats",
    "integration_panels",
    "keys_per_query",
    "layer_labels",
    "layer_masks",
    "load_examples",
    "mean_distance",
    "modality_of",
    "model_heads",
    "naive_layout",
    "pair_count",
    "paper_stride",
    "part_mass",
    "plot_attention",
    "plot_audio_attention",
    "plot_head_stats",
    "plot_image_attention",
    "plot_masks",
    "plot_reach",
    "plot_scaling",
    "plot_text_attention",
    "plot_tile_layouts",
    "plot_work_division",
    "random_model",
    "reach_image",
    "reach_windows",
    "run_layouts",
    "save_figure",
    "save_results",
    "scaling_parts",
    "scaling_table",
    "stat_rows",
    "synthetic_examples",
    "tile_counts",
    "tile_legend",
    "tile_stats",
]
