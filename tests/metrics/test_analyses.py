"""Top-activating images, uniqueness (Jaccard), Matryoshka hierarchy depth and the user-study
alignment benchmark, on hand-built cases with known answers."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch

from sae_vlm_plugin.metrics.alignment import (
    alignment_score,
    load_benchmark_activations,
    load_benchmark_pairs,
    load_benchmark_top_images,
    recompute_benchmark_ms,
    score_benchmark,
)
from sae_vlm_plugin.metrics.codes import TopKCodes
from sae_vlm_plugin.metrics.hierarchy import (
    Taxonomy,
    hierarchy_by_level,
    mean_lca_depth,
    parse_inat_folder_name,
    reference_lca_depths,
)
from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score
from sae_vlm_plugin.metrics.top_activations import TopActivations, top_activations
from sae_vlm_plugin.metrics.uniqueness import jaccard_uniqueness

# torch warns once per process when a test builds a CSR tensor.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

# --- top activations -----------------------------------------------------------------------

HAND = torch.tensor(
    [
        [1.0, 0.0, 3.0],
        [2.0, 0.0, 3.0],
        [0.0, 5.0, -1.0],
        [2.0, 1.0, 0.0],
    ]
)


def test_top_activations_hand_case_orders_ties_by_image_and_pads():
    top = top_activations(HAND, k=3)
    assert top.indices.tolist() == [[1, 3, 0], [2, 3, -1], [0, 1, -1]]
    assert top.values[:, :2].tolist() == [[2.0, 2.0], [5.0, 1.0], [3.0, 3.0]]
    assert torch.isnan(top.values[1:, 2]).all()
    assert top.counts.tolist() == [3, 2, 2]
    assert (top.n_images, top.n_neurons, top.k) == (4, 3, 3)
    every = top_activations(HAND, k=3, positive_only=False)
    assert every.indices.tolist() == [[1, 3, 0], [2, 3, 0], [0, 1, 3]]


def brute_force_top(dense: torch.Tensor, k: int) -> list[list[int]]:
    result = []
    for column in dense.T.tolist():
        ranked = sorted((-v, n) for n, v in enumerate(column) if v > 0)
        result.append([n for _, n in ranked[:k]] + [-1] * (k - min(k, len(ranked))))
    return result


def test_top_activations_all_forms_agree_with_brute_force():
    generator = torch.Generator().manual_seed(0)
    n_images, n_neurons, k = 50, 12, 4
    indices = torch.rand(n_images, n_neurons, generator=generator).topk(3, dim=1).indices
    values = torch.randint(1, 4, (n_images, 3), generator=generator).float()  # many ties
    dense = torch.zeros(n_images, n_neurons).scatter_(1, indices, values)
    expected = brute_force_top(dense, k)
    forms = [
        dense,
        dense.to_sparse(),
        dense.to_sparse_csr(),
        TopKCodes(indices, values, n_neurons),
        [dense[:7], dense[7:30], dense[30:]],
        [TopKCodes(indices[i : i + 9], values[i : i + 9], n_neurons) for i in range(0, 50, 9)],
    ]
    for form in forms:
        top = top_activations(form, k=k)
        assert top.indices.tolist() == expected
        assert top.n_images == n_images


def test_top_activations_errors():
    with pytest.raises(ValueError, match=r"positive_only=False needs dense activations"):
        top_activations(HAND.to_sparse(), positive_only=False)
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        top_activations(HAND, k=0)
    bad = HAND.clone()
    bad[3, 2] = math.nan
    with pytest.raises(ValueError, match=r"image 3, neuron 2 is nan"):
        top_activations([bad[:2], bad[2:]])
    with pytest.raises(ValueError, match=r"batch 1 has 2 neurons but earlier batches had 3"):
        top_activations([HAND, HAND[:, :2]])
    with pytest.raises(ValueError, match=r"stream yielded no batches"):
        top_activations([])


# --- uniqueness ----------------------------------------------------------------------------


def brute_force_jaccard(sets: list[set[int]]) -> list[float]:
    return [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]


def test_uniqueness_hand_case():
    # Neurons 0 and 1 share their whole set (J = 1); 2 shares image 2 with both (J = 1/5);
    # 3 has only two images and is excluded; 4 overlaps nobody.
    indices = torch.tensor([[0, 1, 2], [0, 1, 2], [2, 3, 4], [5, 6, -1], [7, 8, 9]])
    result = jaccard_uniqueness(indices)
    assert (result.n_neurons, result.n_excluded, result.n_pairs) == (4, 1, 6)
    assert (result.n_overlapping, result.n_above_threshold) == (3, 1)
    assert result.mean_jaccard == pytest.approx((1 + 0.2 + 0.2) / 6)
    assert result.max_jaccard == 1.0
    assert result.fraction_unique == 0.5  # neurons 2 and 4
    per = result.max_jaccard_per_neuron
    assert per[[0, 1, 2, 4]].tolist() == pytest.approx([1.0, 1.0, 0.2, 0.0])
    assert math.isnan(per[3])


def test_uniqueness_matches_brute_force_for_any_chunk():
    generator = torch.Generator().manual_seed(1)
    n_neurons, k, n_images = 40, 5, 30
    indices = torch.stack(
        [torch.randperm(n_images, generator=generator)[:k] for _ in range(n_neurons)]
    )
    indices[3, 4] = -1  # an incomplete set
    sets = [set(row.tolist()) - {-1} for row in indices]
    full = [s for s in sets if len(s) == k]
    expected = brute_force_jaccard(full)
    for chunk in (1, 7, 4096):
        result = jaccard_uniqueness(indices, neuron_chunk_size=chunk, threshold=0.3)
        assert result.n_pairs == len(expected)
        assert result.mean_jaccard == pytest.approx(sum(expected) / len(expected))
        assert result.max_jaccard == pytest.approx(max(expected))
        assert result.n_overlapping == sum(j > 0 for j in expected)
        assert result.n_above_threshold == sum(j > 0.3 for j in expected)
    lenient = jaccard_uniqueness(indices, require_full=False)
    assert lenient.mean_jaccard == pytest.approx(
        sum(brute_force_jaccard(sets)) / len(brute_force_jaccard(sets))
    )


def test_uniqueness_bounds_the_pairs_expanded_at_once(monkeypatch):
    """#18 item 27: a dense SAE on few images puts thousands of neurons on every image; the
    pairs expanded at once are bounded by ``max_block_pairs``, not by a neuron count."""
    codes = torch.rand(40, 600, generator=torch.Generator().manual_seed(2)).to_sparse()
    top = top_activations(codes, k=8)  # each image in ~120 top sets
    expected = jaccard_uniqueness(top)
    sizes: list[int] = []
    unique = torch.unique

    def recording_unique(values, *args, **kwargs):
        sizes.append(int(values.numel()))
        return unique(values, *args, **kwargs)

    monkeypatch.setattr(torch, "unique", recording_unique)
    bounded = jaccard_uniqueness(top, max_block_pairs=5000)
    assert sizes
    assert max(sizes) <= 5000 < 600 * 8 * 120 // 2
    for field in ("n_overlapping", "n_above_threshold", "mean_jaccard", "max_jaccard"):
        assert getattr(bounded, field) == pytest.approx(getattr(expected, field)), field
    assert torch.equal(bounded.max_jaccard_per_neuron, expected.max_jaccard_per_neuron)
    with pytest.raises(ValueError, match="max_block_pairs must be a positive int"):
        jaccard_uniqueness(top, max_block_pairs=0)
    assert jaccard_uniqueness(torch.tensor([[0, -1]])).n_neurons == 0  # no full set: no blocks


def test_uniqueness_accepts_top_activations_and_rejects_bad_sets():
    top = top_activations(HAND, k=2)
    assert jaccard_uniqueness(top).n_neurons == 3
    with pytest.raises(ValueError, match=r"neuron 1 lists an image twice"):
        jaccard_uniqueness(torch.tensor([[0, 1], [2, 2]]))
    with pytest.raises(ValueError, match=r"2-D integer"):
        jaccard_uniqueness(torch.rand(3, 2))


# --- hierarchy -----------------------------------------------------------------------------

FOLDERS = [
    "00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
    "00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corone",
    "00002_Animalia_Chordata_Mammalia_Carnivora_Felidae_Felis_catus",
    "00003_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
]


def test_parse_inat_folder_name():
    assert parse_inat_folder_name(FOLDERS[0]) == (
        "Animalia",
        "Chordata",
        "Aves",
        "Passeriformes",
        "Corvidae",
        "Corvus",
        "corax",
    )
    with pytest.raises(ValueError, match=r"not an iNaturalist class folder name"):
        parse_inat_folder_name("Animalia_Chordata")


def test_mean_lca_depth_hand_case():
    taxonomy = Taxonomy.from_folder_names(FOLDERS)
    # images: 0, 1 -> raven; 2 -> crow; 3 -> cat; 4 -> rose
    image_classes = torch.tensor([0, 0, 1, 2, 3])
    top = torch.tensor(
        [
            [0, 1, -1],  # two ravens: the species node, depth 7
            [0, 2, -1],  # raven + crow: genus Corvus, depth 6
            [0, 2, 3],  # pairs: genus 6, class... raven/cat phylum 2, crow/cat 2 -> 10/3
            [0, 4, -1],  # animal + plant: the root, depth 0
            [3, -1, -1],  # one image: no pair
        ]
    )
    depths = mean_lca_depth(top, image_classes, taxonomy)
    assert depths[:4].tolist() == pytest.approx([7.0, 6.0, 10 / 3, 0.0])
    assert math.isnan(depths[4])
    assert taxonomy.lca_depth(0, 2) == 2
    stats = hierarchy_by_level(
        depths, [2, 5], scores=torch.tensor([0.1, 0.3, 0.2, 0.4, 0.5], dtype=torch.float64)
    )
    assert [(s.start, s.stop, s.n_with_depth) for s in stats] == [(0, 2, 2), (2, 5, 2)]
    assert stats[0].mean_depth == pytest.approx(6.5)
    assert stats[1].mean_depth == pytest.approx(5 / 3)
    assert (stats[1].ms_min, stats[1].ms_max) == (0.2, 0.5)
    assert stats[1].ms_mean == pytest.approx(1.1 / 3)


def inat_depth_reference(top, image_classes, taxonomy):
    """inat_depth.py's rules, re-implemented plainly: neurons whose k-th best activation is 0 are
    left out; each neuron's mean pair LCA is rounded; the majority vote is Counter's."""
    from collections import Counter

    rounded, majority = [], []
    for neuron in range(top.n_neurons):
        if top.values[neuron, -1] == 0 or math.isnan(top.values[neuron, -1]):
            rounded.append(math.nan)
            majority.append(math.nan)
            continue
        paths = [taxonomy.paths[image_classes[i]] for i in top.indices[neuron].tolist()]
        lcas = []
        for x, y in itertools.combinations(paths, 2):
            depth = 0
            for a, b in zip(x, y, strict=False):
                if a != b:
                    break
                depth += 1
            lcas.append(depth)
        rounded.append(round(sum(lcas) / len(lcas)))
        majority.append(Counter(lcas).most_common(1)[0][0])
    return rounded, majority


@pytest.mark.parametrize("seed", range(4))
def test_reference_depths_follow_inat_depth_py(seed):
    """#15 item 5: Table A8 as the reference computes it (rounded means, majority votes ties
    included, neurons with a zero 16th activation left out)."""
    generator = torch.Generator().manual_seed(seed)
    names = [
        f"{i:05d}_" + "_".join(f"n{int(v)}" for v in torch.randint(0, 2, (4,), generator=generator))
        for i in range(12)
    ]
    taxonomy = Taxonomy.from_folder_names(names)
    n_images, k = 60, 5
    image_classes = torch.randint(0, len(names), (n_images,), generator=generator)
    codes = torch.rand(n_images, 80, generator=generator)
    codes[codes < 0.9] = 0.0  # sparse: some neurons fire on fewer than k images
    top = top_activations(codes, k=k)
    got = reference_lca_depths(top, image_classes, taxonomy, neuron_chunk_size=7)
    rounded, majority = inat_depth_reference(top, image_classes.tolist(), taxonomy)
    torch.testing.assert_close(
        got.rounded_mean, torch.tensor(rounded, dtype=torch.float64), equal_nan=True
    )
    torch.testing.assert_close(
        got.majority, torch.tensor(majority, dtype=torch.float64), equal_nan=True
    )
    assert 0 < int(torch.isnan(got.majority).sum()) < top.n_neurons


def test_reference_depth_rounds_half_to_even_and_breaks_ties_by_pair_order():
    taxonomy = Taxonomy.from_mapping({"a": ["X", "Y"], "b": ["X", "Z"], "c": ["W"]})
    # images a, b, a: pairs (a,b)=1, (a,a)=2, (b,a)=1 -> mean 4/3 -> 1, majority 1
    # images a, c, b: pairs (a,c)=0, (a,b)=1, (c,b)=0 -> mean 1/3 -> 0, majority 0
    indices = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 1]])
    values = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 0.0]], dtype=torch.float64)
    top = TopActivations(values=values, indices=indices, n_images=5)
    image_classes = torch.tensor([0, 1, 0, 2, 1])
    got = reference_lca_depths(top, image_classes, taxonomy)
    assert got.rounded_mean[:2].tolist() == [1.0, 0.0]
    assert got.majority[:2].tolist() == [1.0, 0.0]
    assert math.isnan(got.rounded_mean[2])  # its 3rd-best activation is 0: left out
    # 2.5 rounds to 2 (half to even, as Python's round); a 3-3 tie goes to the value met first
    deep = Taxonomy.from_mapping({"p": ["A", "B", "C"], "q": ["A", "B", "C"], "r": ["A", "B", "D"]})
    pair = TopActivations(
        values=torch.tensor([[2.0, 1.0, 1.0, 1.0]], dtype=torch.float64),
        indices=torch.tensor([[0, 1, 2, 0]]),
        n_images=3,
    )
    depths = reference_lca_depths(pair, torch.tensor([0, 1, 2]), deep)
    # pairs: (p,q)=3 (p,r)=2 (p,p)=3 (q,r)=2 (q,p)=3 (r,p)=2 -> mean 2.5 -> 2; majority 3 first
    assert depths.rounded_mean.tolist() == [2.0]
    assert depths.majority.tolist() == [3.0]


def test_taxonomy_sources_and_uneven_paths(tmp_path):
    mapping = {"a": ["X", "Y"], "b": ["X", "Y", "Z"], "c": ["W"]}
    (tmp_path / "tax.json").write_text(json.dumps(mapping))
    (tmp_path / "classes.txt").write_text("\n".join(FOLDERS) + "\n\n")
    from_json = Taxonomy.from_file(tmp_path / "tax.json")
    assert from_json == Taxonomy.from_mapping(mapping)
    assert Taxonomy.from_file(tmp_path / "classes.txt") == Taxonomy.from_folder_names(FOLDERS)
    # "a" is an ancestor-level path of "b": they meet at depth 2, capped by the shorter path.
    classes = from_json.class_indices(["a", "b", "c"])
    depths = mean_lca_depth(torch.tensor([[0, 1], [0, 2]]), classes, from_json)
    assert depths.tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match=r"labels not in the taxonomy"):
        from_json.class_indices(["d"])


def test_hierarchy_errors():
    taxonomy = Taxonomy.from_folder_names(FOLDERS)
    with pytest.raises(ValueError, match=r"image_classes must lie in \[0, 4\)"):
        mean_lca_depth(torch.tensor([[0, 1]]), torch.tensor([0, 9]), taxonomy)
    with pytest.raises(ValueError, match=r"out of range for 2 image classes"):
        mean_lca_depth(torch.tensor([[0, 5]]), torch.tensor([0, 1]), taxonomy)
    with pytest.raises(ValueError, match=r"strictly increasing positive cumulative widths"):
        hierarchy_by_level(torch.zeros(5), [3, 2, 5])
    with pytest.raises(ValueError, match=r"ending at n_neurons=5"):
        hierarchy_by_level(torch.zeros(5), [3, 16])


# --- alignment -----------------------------------------------------------------------------

PAIRS_CSV = """k_x,k_y,R_user,MS_x_dino,MS_y_dino,MS_x_clip,MS_y_clip
10,11,10,0.50,0.45,0.60,0.70
12,13,13,0.10,0.30,0.55,0.50
14,15,14,0.90,0.05,0.80,0.52
16,17,17,0.20,0.20,0.50,0.51
10,13,13,0.50,0.30,0.60,0.50
"""
# dino decisions: x, y, x, y (tie -> k_y), x; users: x, y, x, y, y -> 4/5 aligned.
# dino |diff|: 0.05, 0.20, 0.85, 0.00, 0.20 -> bins 0 (2 pairs, both aligned),
# 2 (2 pairs, 1 aligned), 8 (1 pair, aligned); bins 1 and 3-7 are empty.
# clip decisions: y, x, x, y, x -> aligned: no, no, yes, yes, no -> 2/5.


def write_benchmark(tmp_path):
    (tmp_path / "pairs.csv").write_text(PAIRS_CSV)
    return load_benchmark_pairs(tmp_path / "pairs.csv")


def test_alignment_reproduces_hand_built_benchmark(tmp_path):
    pairs = write_benchmark(tmp_path)
    assert pairs.n_pairs == 5
    assert pairs.user_prefers_x.tolist() == [True, False, True, False, False]
    assert pairs.neuron_ids == ("10", "11", "12", "13", "14", "15", "16", "17")
    dino = score_benchmark(pairs, "dino")
    assert dino.score == pytest.approx(0.8)
    assert [(b.n_pairs, b.score) for b in dino.bins if b.n_pairs] == [
        (2, 1.0),
        (2, 0.5),
        (1, 1.0),
    ]
    assert len(dino.bins) == 9
    assert all(math.isnan(b.score) for b in dino.bins if not b.n_pairs)
    assert (dino.bins[2].low, dino.bins[2].high) == pytest.approx((0.2, 0.3))
    clip = score_benchmark(pairs, "clip")
    assert clip.score == pytest.approx(0.4)
    # Table A1(a), second row: CLIP decisions binned by the DINOv2 distance.
    clip_by_dino = score_benchmark(pairs, "clip", bin_by="dino")
    assert [(b.n_pairs, b.score) for b in clip_by_dino.bins if b.n_pairs] == [
        (2, 0.5),
        (2, 0.0),
        (1, 1.0),
    ]
    # Any metric, given per neuron id: here a metric that always favours the larger id.
    by_id = {k: float(k) for k in pairs.neuron_ids}
    assert score_benchmark(pairs, by_id).score == pytest.approx(3 / 5)


def test_pairs_without_a_score_are_skipped_and_counted(tmp_path, capsys):
    """#18 item 24: an empty MS cell (NaN) leaves its pair out instead of aborting."""
    from sae_vlm_plugin.cli import main as cli_main

    lines = PAIRS_CSV.strip().splitlines()
    lines[2] = "12,13,13,,0.30,0.55,0.50"  # pair 1 lacks MS_x_dino
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    pairs = load_benchmark_pairs(tmp_path / "pairs.csv")
    dino = score_benchmark(pairs, "dino")
    assert (dino.n_pairs, dino.n_skipped) == (4, 1)
    assert dino.score == pytest.approx(3 / 4)  # pair 1 (aligned: y, y) is left out
    assert score_benchmark(pairs, "clip").n_skipped == 0
    assert cli_main(["alignment", "--pairs", str(tmp_path / "pairs.csv")]) == 0
    assert "alignment 0.750 over 4 pairs (1 without a score skipped)" in capsys.readouterr().out


def test_alignment_score_arrays_and_errors(tmp_path):
    result = alignment_score([0.3, 0.0], [0.0, 0.3], [True, True], bin_width=0.1)
    assert result.score == 0.5
    assert [b.n_pairs for b in result.bins] == [0, 0, 0, 2]  # 0.3 lands in [0.3, 0.4)
    with pytest.raises(ValueError, match=r"score_y is inf for pair 1"):
        alignment_score([0.1, 0.2], [0.1, math.inf], [True, False])
    with pytest.raises(ValueError, match=r"no pairs to score: 1 pairs, none with both scores"):
        alignment_score([math.nan], [0.1], [True])
    with pytest.raises(ValueError, match=r"one value per pair"):
        alignment_score([0.1, 0.2], [0.1], [True, False])
    pairs = write_benchmark(tmp_path)
    with pytest.raises(ValueError, match=r"scores lack 1 benchmark neurons"):
        score_benchmark(pairs, {k: 0.0 for k in pairs.neuron_ids[:-1]})
    with pytest.raises(ValueError, match=r"no MS column 'siglip'"):
        score_benchmark(pairs, "siglip")
    (tmp_path / "bad.csv").write_text("k_x,k_y,R_user\n1,2,3\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: R_user='3' must name the chosen neuron"):
        load_benchmark_pairs(tmp_path / "bad.csv")
    (tmp_path / "literal.csv").write_text("k_x,k_y,R_user\n1,2,k_y\n1,2,x\n1,2,2.0\n")
    assert load_benchmark_pairs(tmp_path / "literal.csv").user_prefers_x.tolist() == [
        False,
        True,
        False,
    ]


def test_a_pairs_row_with_too_few_or_too_many_fields_is_named(tmp_path):
    """#27 item 9: a short row gave an AttributeError traceback."""
    (tmp_path / "short.csv").write_text("k_x,k_y,R_user,MS_x_dino,MS_y_dino\n1,2,1,0.5,0.4\n3,4\n")
    with pytest.raises(ValueError, match=r"short\.csv:3: 2 fields, the header has 5"):
        load_benchmark_pairs(tmp_path / "short.csv")
    (tmp_path / "long.csv").write_text("k_x,k_y,R_user\n1,2,1,9\n")
    with pytest.raises(ValueError, match=r"long\.csv:2: 4 fields, the header has 3"):
        load_benchmark_pairs(tmp_path / "long.csv")
    (tmp_path / "word.csv").write_text("k_x,k_y,R_user,MS_x_dino,MS_y_dino\n1,2,1,high,0.4\n")
    with pytest.raises(ValueError, match=r"word\.csv:2: MS_x_dino='high' is not a number"):
        load_benchmark_pairs(tmp_path / "word.csv")


def test_pairs_saved_by_excel_and_repeated_columns(tmp_path, capsys):
    """#27 item 19: a UTF-8 BOM (Excel's "CSV UTF-8") is read; a repeated column is refused; a
    dino-only file scores dino by default, and a metric it lacks is refused before any table."""
    from sae_vlm_plugin.cli import main as cli_main

    dino_only = "\n".join(",".join(row.split(",")[:5]) for row in PAIRS_CSV.strip().splitlines())
    (tmp_path / "excel.csv").write_bytes(("\ufeff" + dino_only + "\n").encode())
    pairs = load_benchmark_pairs(tmp_path / "excel.csv")
    assert sorted(pairs.ms_x) == ["dino"]
    assert cli_main(["alignment", "--pairs", str(tmp_path / "excel.csv")]) == 0
    out = capsys.readouterr().out
    assert "MS (dino): alignment 0.800 over 5 pairs" in out
    assert "clip" not in out
    argv = ["alignment", "--pairs", str(tmp_path / "excel.csv"), "--metric", "dino"]
    assert cli_main([*argv, "--metric", "clip"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no MS column 'clip'; available: ['dino']" in captured.err
    assert cli_main([*argv, "--bin-by", "clip"]) == 2
    assert capsys.readouterr().out == ""
    (tmp_path / "twice.csv").write_text("k_x,k_y,R_user,k_x\n1,2,1,3\n")
    with pytest.raises(ValueError, match=r"twice\.csv: repeated column 'k_x'"):
        load_benchmark_pairs(tmp_path / "twice.csv")


def test_recompute_benchmark_ms_from_activations_csv(tmp_path):
    generator = torch.Generator().manual_seed(2)
    n_images = 12
    activations = torch.rand(n_images, 3, generator=generator)
    activations[:, 1] = activations[:, 1] * (activations[:, 1] > 0.6)
    embeddings = torch.randn(n_images, 4, generator=generator)
    header = "k," + ",".join(f"a_{i + 1}" for i in range(n_images))
    lines = [
        f"{neuron}," + ",".join(repr(v) for v in activations[:, j].tolist())
        for j, neuron in enumerate(["7", "8", "9"])
    ]
    (tmp_path / "activations.csv").write_text("\n".join([header, *lines]) + "\n")
    ids, loaded = load_benchmark_activations(tmp_path / "activations.csv")
    assert ids == ("7", "8", "9")
    torch.testing.assert_close(loaded, activations)
    expected = monosemanticity_score(activations, embeddings).scores.tolist()
    recomputed = recompute_benchmark_ms(tmp_path / "activations.csv", embeddings)
    assert list(recomputed) == ["7", "8", "9"]
    assert list(recomputed.values()) == pytest.approx(expected)
    (tmp_path / "short.csv").write_text(header + "\n7,1.0,2.0\n")
    with pytest.raises(ValueError, match=r"short.csv:2: neuron '7' has 2 activations"):
        load_benchmark_activations(tmp_path / "short.csv")


def test_load_top_images(tmp_path):
    header = "k," + ",".join(f"x_{i}" for i in range(1, 17))
    row = "5," + ",".join(f"n0144_{i}.JPEG" for i in range(16))
    (tmp_path / "top16_images.csv").write_text(f"{header}\n{row}\n")
    top = load_benchmark_top_images(tmp_path / "top16_images.csv")
    assert list(top) == ["5"]
    assert top["5"][0] == "n0144_0.JPEG"
    assert len(top["5"]) == 16


# --- package -------------------------------------------------------------------------------


def test_metrics_package_is_lazy_and_its_names_resolve():
    script = (
        "import sys, sae_vlm_plugin.metrics as m; "
        "print('torch' in sys.modules, sorted(set(m.__all__) - set(dir(m))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "[]"]
    import sae_vlm_plugin.metrics as metrics

    for name in metrics.__all__:
        assert getattr(metrics, name) is not None
    with pytest.raises(AttributeError, match="no_such_metric"):
        metrics.no_such_metric  # noqa: B018


def test_cli_alignment_prints_table_a1(tmp_path, capsys):
    from sae_vlm_plugin.cli import main as cli_main

    (tmp_path / "pairs.csv").write_text(PAIRS_CSV)
    pairs = load_benchmark_pairs(tmp_path / "pairs.csv")
    assert cli_main(["alignment", "--pairs", str(tmp_path / "pairs.csv")]) == 0
    out = capsys.readouterr().out
    for metric in ("dino", "clip"):
        expected = score_benchmark(pairs, metric)
        assert f"MS ({metric}): alignment {expected.score:.3f} over {expected.n_pairs} pairs" in out
