"""MS against an independent, plainly written pairwise reference (Eq. 7-9 of the paper)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_vlm_plugin.metrics import monosemanticity
from sae_vlm_plugin.metrics.codes import TopKCodes
from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score

# torch warns once per process when a test builds a CSR tensor.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def naive_ms(activations: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Eq. 7-9 as written: min-max normalise each neuron, weight every pair n < m of distinct
    images by a_n a_m, average the pair cosines. Also the support (a_n > 0)."""
    x = activations.to(torch.float64)
    e = embeddings.to(torch.float64)
    n_images, n_neurons = x.shape
    unit = e / e.norm(dim=1, keepdim=True)
    cosine = unit @ unit.T  # the N x N similarity matrix S (Eq. 5)
    upper = torch.ones(n_images, n_images, dtype=torch.bool).triu(diagonal=1)
    scores = torch.full((n_neurons,), math.nan, dtype=torch.float64)
    support = []
    for k in range(n_neurons):
        column = x[:, k]
        low, high = column.min(), column.max()
        support.append(int((column > low).sum()))
        if high == low:
            continue  # dead or constant: 0/0
        a = (column - low) / (high - low)  # Eq. 7
        relevance = torch.outer(a, a)  # Eq. 8
        weight = relevance[upper].sum()
        if weight > 0:
            scores[k] = (relevance[upper] * cosine[upper]).sum() / weight  # Eq. 9
    return scores, support


def assert_matches(result, reference, support, atol=1e-6):
    torch.testing.assert_close(result.scores, reference, atol=atol, rtol=0, equal_nan=True)
    assert result.support.tolist() == support


def random_sparse(n_images, n_neurons, density, generator):
    values = torch.rand(n_images, n_neurons, generator=generator, dtype=torch.float64) + 0.1
    mask = torch.rand(n_images, n_neurons, generator=generator) < density
    return values * mask


def special_columns(n_images: int) -> torch.Tensor:
    """Dead, constant, single-image, two-image and negative-valued neurons."""
    columns = torch.zeros(n_images, 6, dtype=torch.float64)
    columns[:, 1] = 2.5  # constant, non-zero
    columns[3, 2] = 1.7  # fires on one image
    columns[[1, 6], 3] = torch.tensor([0.4, 2.0], dtype=torch.float64)  # fires on two images
    columns[:, 4] = -torch.linspace(3.0, 9.0, n_images)  # all negative
    columns[:, 5] = -1.0
    columns[[2, 5, 7], 5] = torch.tensor(
        [-3.0, 0.5, -0.2], dtype=torch.float64
    )  # negative minimum, mixed signs
    return columns


def test_hand_computed_case():
    # e = (1,0), (0,1), (2,2) [-> (1,1)/sqrt2], (-1,0); x = 4, 2, 3, 1 -> a = 1, 1/3, 2/3, 0.
    # Weighted pairs: (1,2) 1/3 * cos 0; (1,3) 2/3 * cos 1/sqrt2; (2,3) 2/9 * cos 1/sqrt2;
    # pairs with image 4 weigh 0. MS = (8/9)/sqrt2 / (11/9) = 8 / (11 sqrt2) = 0.514259...
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    activations = torch.tensor([[4.0], [2.0], [3.0], [1.0]])
    result = monosemanticity_score(activations, embeddings)
    assert result.scores.item() == pytest.approx(8 / (11 * math.sqrt(2)), abs=1e-12)
    assert result.scores.item() == pytest.approx(0.5142594772265799, abs=1e-12)
    assert result.support.tolist() == [3]
    assert result.n_images == 4


def test_dense_random_with_special_neurons_matches_naive():
    generator = torch.Generator().manual_seed(0)
    n_images = 24
    activations = torch.cat(
        [torch.randn(n_images, 10, generator=generator, dtype=torch.float64), special_columns(24)],
        dim=1,
    )
    embeddings = torch.randn(n_images, 7, generator=generator)
    reference, support = naive_ms(activations, embeddings)
    result = monosemanticity_score(activations, embeddings)
    assert_matches(result, reference, support)
    assert torch.isnan(result.scores[[10, 11, 12]]).all()  # dead, constant, single image
    assert result.support[10:13].tolist() == [0, 0, 1]
    assert not torch.isnan(result.scores[[13, 14, 15]]).any()


def test_two_image_neuron_scores_the_cosine_of_the_pair():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    activations = torch.zeros(9, 1, dtype=torch.float64)
    activations[[2, 7], 0] = torch.tensor([0.3, 5.0], dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(embeddings[2], embeddings[7], dim=0)
    for form in (activations, activations.to_sparse()):
        result = monosemanticity_score(form, embeddings)
        assert result.scores.item() == pytest.approx(expected.item(), abs=1e-12)
        assert result.support.item() == 2


@pytest.mark.parametrize("chunk", [None, 1, 3, 1000])
def test_sparse_forms_equal_dense_and_naive(chunk):
    generator = torch.Generator().manual_seed(2)
    n_images, n_neurons = 30, 12
    dense = random_sparse(n_images, n_neurons, 0.2, generator)
    dense[:, 0] = 0.0  # dead
    dense[:, 1] = 0.0
    dense[4, 1] = 1.0  # single image
    dense[:, 2] = torch.rand(n_images, generator=generator, dtype=torch.float64) + 1  # all images
    embeddings = torch.randn(n_images, 6, generator=generator)
    reference, support = naive_ms(dense, embeddings)
    k = int((dense != 0).sum(dim=1).max())
    top_values, top_indices = dense.topk(k, dim=1)
    codes = TopKCodes(top_indices, top_values, n_neurons)  # includes stored zeros
    for form in (dense, dense.to_sparse(), dense.to_sparse_csr(), codes):
        result = monosemanticity_score(form, embeddings, neuron_chunk_size=chunk)
        assert_matches(result, reference, support)


def test_sparse_with_negative_stored_values_matches_naive():
    generator = torch.Generator().manual_seed(3)
    dense = random_sparse(20, 8, 0.3, generator)
    dense[[1, 5], 3] = torch.tensor([-2.0, -0.5], dtype=torch.float64)  # below the implicit zeros
    dense[:, 4] = -1.0  # stored on every image, all negative
    dense[6, 4] = 3.0
    embeddings = torch.randn(20, 4, generator=generator)
    reference, support = naive_ms(dense, embeddings)
    assert_matches(monosemanticity_score(dense.to_sparse(), embeddings), reference, support)


def split(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, sizes, dim=0))


def test_streams_equal_in_memory():
    generator = torch.Generator().manual_seed(4)
    n_images = 26
    dense_raw = torch.cat(
        [torch.randn(n_images, 6, generator=generator, dtype=torch.float64), special_columns(26)],
        dim=1,
    )
    codes = random_sparse(n_images, 9, 0.25, generator)
    embeddings = torch.randn(n_images, 5, generator=generator)
    sizes = [5, 0, 11, 10]
    for activations, batches in (
        (dense_raw, split(dense_raw, sizes)),
        (codes, [b.to_sparse() for b in split(codes, sizes)]),
        (
            codes,
            [
                b.to_sparse_csr() if i % 2 else b.to_sparse()
                for i, b in enumerate(split(codes, sizes))
            ],
        ),
        (codes, iter(split(codes, [26]))),
    ):
        in_memory = monosemanticity_score(activations, embeddings)
        streamed = monosemanticity_score(batches, embeddings, neuron_chunk_size=4)
        reference, support = naive_ms(activations, embeddings)
        assert_matches(streamed, reference, support)
        torch.testing.assert_close(streamed.scores, in_memory.scores, equal_nan=True)


def test_topk_code_stream_equals_dense():
    generator = torch.Generator().manual_seed(5)
    n_images, n_neurons, k = 40, 16, 3
    indices = torch.rand(n_images, n_neurons, generator=generator).topk(k, dim=1).indices
    values = torch.rand(n_images, k, generator=generator) + 0.05
    dense = torch.zeros(n_images, n_neurons).scatter_(1, indices, values)
    embeddings = torch.randn(n_images, 8, generator=generator)
    batches = [TopKCodes(indices[i : i + 16], values[i : i + 16], n_neurons) for i in (0, 16, 32)]
    reference, support = naive_ms(dense, embeddings)
    assert_matches(monosemanticity_score(batches, embeddings), reference, support)
    assert_matches(
        monosemanticity_score(TopKCodes(indices, values, n_neurons), embeddings),
        reference,
        support,
    )


def test_mostly_zero_dense_matrix_goes_through_the_sparse_product(monkeypatch):
    # SAE codes held in a dense matrix: the dense paths multiply through the non-zeros only.
    generator = torch.Generator().manual_seed(8)
    dense = random_sparse(300, 40, 0.01, generator)
    dense[[4, 9], 0] = torch.tensor([1.0, 2.0], dtype=torch.float64)  # a two-image neuron
    embeddings = torch.randn(300, 5, generator=generator)
    reference, support = naive_ms(dense, embeddings)
    calls = []
    original = monosemanticity.neuron_block
    monkeypatch.setattr(
        monosemanticity, "neuron_block", lambda *args: calls.append(1) or original(*args)
    )
    assert_matches(monosemanticity_score(dense, embeddings), reference, support)
    assert calls
    calls.clear()
    streamed = monosemanticity_score(split(dense, [100, 200]), embeddings, neuron_chunk_size=7)
    assert_matches(streamed, reference, support)
    assert calls


def test_wide_codes_beyond_16_bit_neuron_ids():
    # Neuron ids >= 2**16 take the other sorting path; a neuron's score ignores the others.
    generator = torch.Generator().manual_seed(9)
    ids = torch.tensor([0, 5, 65_535, 65_536, 69_999])
    indices = torch.stack([torch.randperm(5, generator=generator)[:2] for _ in range(12)])
    values = torch.rand(12, 2, generator=generator) + 0.1
    embeddings = torch.randn(12, 3, generator=generator)
    narrow = monosemanticity_score(TopKCodes(indices, values, 5), embeddings)
    wide = monosemanticity_score(TopKCodes(ids[indices], values, 70_000), embeddings)
    torch.testing.assert_close(wide.scores[ids], narrow.scores, equal_nan=True)
    assert wide.support[ids].tolist() == narrow.support.tolist()
    dense = torch.zeros(12, 5).scatter_(1, indices, values)
    assert_matches(narrow, *naive_ms(dense, embeddings))


def test_dense_stream_with_a_large_offset_stays_accurate():
    # Raw neurons sitting far from zero: the stream's pivot keeps the shifted sums accurate.
    generator = torch.Generator().manual_seed(6)
    activations = 1000.0 + torch.rand(60, 5, generator=generator, dtype=torch.float64)
    embeddings = torch.randn(60, 6, generator=generator, dtype=torch.float64)
    reference, support = naive_ms(activations, embeddings)
    streamed = monosemanticity_score(split(activations, [7, 23, 30]), embeddings)
    assert_matches(streamed, reference, support, atol=1e-9)


def test_min_support_masks_and_numpy_inputs_work():
    generator = torch.Generator().manual_seed(7)
    dense = random_sparse(30, 10, 0.2, generator)
    embeddings = torch.randn(30, 4, generator=generator)
    full = monosemanticity_score(dense.numpy(), embeddings.numpy())
    masked = monosemanticity_score(dense, embeddings, min_support=6)
    keep = full.support >= 6
    assert keep.any()
    assert (~keep).any()
    torch.testing.assert_close(masked.scores[keep], full.scores[keep])
    assert torch.isnan(masked.scores[~keep]).all()
    assert masked.min_support == 6
    summary = masked.summary()
    assert summary["n_scored"] == int(keep.sum()) == masked.n_scored
    assert summary["max"] == pytest.approx(float(masked.scores[keep].max()))
    assert summary["n_masked"] == masked.n_neurons - masked.n_scored


def test_ids_that_agree_are_accepted():
    embeddings = torch.eye(3)
    activations = torch.tensor([[1.0], [2.0], [3.0]])
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    result = monosemanticity_score(activations, embeddings, image_ids=ids, embedding_ids=ids)
    assert result.scores.item() == pytest.approx(0.0)


@settings(max_examples=40, deadline=None)
@given(
    n_images=st.integers(1, 14),
    n_neurons=st.integers(1, 6),
    d_embed=st.integers(1, 4),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
    form=st.sampled_from(["dense", "coo", "csr", "stream"]),
)
def test_hypothesis_matches_naive(n_images, n_neurons, d_embed, density, signed, seed, form):
    generator = torch.Generator().manual_seed(seed)
    activations = random_sparse(n_images, n_neurons, density, generator)
    if signed:
        activations = activations - 0.5 * (activations > 0)
    embeddings = torch.randn(n_images, d_embed, generator=generator, dtype=torch.float64)
    embeddings[:, 0] += 0.1  # keep every norm away from zero
    reference, support = naive_ms(activations, embeddings)
    if form == "coo":
        given_activations = activations.to_sparse()
    elif form == "csr":
        given_activations = activations.to_sparse_csr()
    elif form == "stream":
        given_activations = [b.to_sparse() for b in torch.split(activations, 3)]
    else:
        given_activations = activations
    result = monosemanticity_score(given_activations, embeddings, neuron_chunk_size=2)
    assert_matches(result, reference, support)


# --- errors ------------------------------------------------------------------------------


def test_image_count_mismatch():
    with pytest.raises(ValueError, match=r"cover 4 images but the embeddings have 5 rows"):
        monosemanticity_score(torch.rand(4, 2), torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"stream covered 4 images but the embeddings have 5"):
        monosemanticity_score([torch.rand(2, 2), torch.rand(2, 2)], torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"batch 1 brings the stream to 6 images"):
        monosemanticity_score([torch.rand(3, 2), torch.rand(3, 2)], torch.rand(5, 3))


def test_id_mismatch():
    activations, embeddings = torch.rand(3, 2), torch.rand(3, 2)
    with pytest.raises(ValueError, match=r"differ at position 1 .*different order"):
        monosemanticity_score(activations, embeddings, image_ids=[1, 2, 3], embedding_ids=[1, 3, 2])
    with pytest.raises(ValueError, match=r"differ at position 2 .*different images"):
        monosemanticity_score(
            activations, embeddings, image_ids=["a", "b", "c"], embedding_ids=["a", "b", "d"]
        )
    with pytest.raises(ValueError, match=r"image_ids has 2 ids but the embeddings have 3 rows"):
        monosemanticity_score(activations, embeddings, image_ids=["a", "b"])


def test_non_finite_values():
    activations = torch.rand(4, 3)
    activations[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"image 2, neuron 1 is nan; activations must be finite"):
        monosemanticity_score(activations, torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"batch 1: activation of image 2, neuron 1 is nan"):
        monosemanticity_score([activations[:1], activations[1:]], torch.rand(4, 2))
    sparse = torch.zeros(4, 3)
    sparse[1, 2] = math.inf
    with pytest.raises(ValueError, match=r"image 1, neuron 2 is inf"):
        monosemanticity_score(sparse.to_sparse(), torch.rand(4, 2))
    embeddings = torch.rand(4, 2)
    embeddings[3, 0] = -math.inf
    with pytest.raises(ValueError, match=r"embedding row 3 contains NaN or inf"):
        monosemanticity_score(torch.rand(4, 3), embeddings)


def test_zero_norm_embedding():
    embeddings = torch.rand(4, 2)
    embeddings[1] = 0.0
    with pytest.raises(ValueError, match=r"embedding row 1 \(image 1\) has zero norm"):
        monosemanticity_score(torch.rand(4, 3), embeddings)


def test_empty_inputs_and_shapes():
    with pytest.raises(ValueError, match=r"embeddings are empty"):
        monosemanticity_score(torch.rand(0, 3), torch.rand(0, 2))
    with pytest.raises(ValueError, match=r"empty: 0 neurons"):
        monosemanticity_score(torch.rand(4, 0), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"stream yielded no images"):
        monosemanticity_score([], torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"stream yielded no images"):
        monosemanticity_score([torch.rand(0, 3)], torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"batch 0 is empty: 0 neurons"):
        monosemanticity_score([torch.rand(4, 0)], torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"expected a 2-D \(n_images, n_neurons\) matrix"):
        monosemanticity_score(torch.rand(4), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D"):
        monosemanticity_score(torch.rand(4, 3), torch.rand(4, 2, 1))
    with pytest.raises(ValueError, match=r"batch 1 has 2 neurons but earlier batches had 3"):
        monosemanticity_score([torch.rand(2, 3), torch.rand(2, 2)], torch.rand(4, 2))


def test_wrong_types_and_options():
    with pytest.raises(TypeError, match=r"got str"):
        monosemanticity_score("activations.pt", torch.rand(4, 2))
    with pytest.raises(TypeError, match=r"got list"):
        monosemanticity_score(torch.rand(4, 3), [[1.0, 2.0]] * 4)
    with pytest.raises(TypeError, match=r"only dense batches or only sparse"):
        monosemanticity_score([torch.rand(2, 3), torch.rand(2, 3).to_sparse()], torch.rand(4, 2))
    with pytest.raises(TypeError, match=r"real-valued"):
        monosemanticity_score(torch.ones(4, 3, dtype=torch.bool), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"min_support must be an int >= 1"):
        monosemanticity_score(torch.rand(4, 3), torch.rand(4, 2), min_support=0)
    with pytest.raises(ValueError, match=r"neuron_chunk_size must be a positive int"):
        monosemanticity_score(torch.rand(4, 3), torch.rand(4, 2), neuron_chunk_size=0)


def test_topk_codes_validation():
    with pytest.raises(ValueError, match=r"row 1 names a neuron twice"):
        TopKCodes(torch.tensor([[0, 1], [2, 2]]), torch.ones(2, 2), 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), found 0..3"):
        TopKCodes(torch.tensor([[0, 3]]), torch.ones(1, 2), 3)
    with pytest.raises(ValueError, match=r"same \(n_images, k\) shape"):
        TopKCodes(torch.tensor([[0, 1]]), torch.ones(1, 3), 3)
    with pytest.raises(TypeError, match=r"indices must be integers"):
        TopKCodes(torch.ones(1, 2), torch.ones(1, 2), 3)
    codes = TopKCodes(torch.tensor([[0, 1]]), torch.tensor([[np.nan, 1.0]]), 3)
    with pytest.raises(ValueError, match=r"image 0, neuron 0 is nan"):
        monosemanticity_score(codes, torch.rand(1, 2))
