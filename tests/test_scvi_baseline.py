"""scVI baseline generator (cellgraph.tl.scvi_baseline): planted condition effect recovered from prior samples."""

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("scvi")

from cellgraph.errors import InputError  # noqa: E402
from cellgraph.tl.scvi_baseline import scvi_generate  # noqa: E402

N_PER, N_GENES, BLOCK, FOLD = 300, 50, 10, 8.0


def _planted_counts(seed=0):
    """NB counts, conditions a/b; genes 0..9 are 8x higher in b; per-cell size factors vary (lognormal sd 0.4)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, N_GENES)
    base = 400.0 * base / base.sum()  # mean counts of a cell of condition a at size factor 1
    mean_b = base.copy()
    mean_b[:BLOCK] *= FOLD
    labels = np.array(["a"] * N_PER + ["b"] * N_PER)
    size_factor = rng.lognormal(0.0, 0.4, 2 * N_PER)
    mu = np.where((labels == "b")[:, None], mean_b, base) * size_factor[:, None]
    theta = 2.0
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.int64)
    return counts, labels, rng


@pytest.fixture(scope="module")
def fitted():
    counts, labels, rng = _planted_counts()
    labels_gen = np.array(["a"] * N_PER + ["b"] * N_PER)
    library = np.concatenate([rng.choice(counts[labels == c].sum(1), N_PER) for c in ("a", "b")]).astype(float)
    generated, report = scvi_generate(counts, labels, labels_gen, library, max_epochs=40, batch_size=32, seed=0)
    return counts, labels, labels_gen, library, generated, report


def test_generated_counts_are_whole_numbers_of_the_right_shape(fitted):
    counts, _, labels_gen, _, generated, report = fitted
    assert generated.shape == (len(labels_gen), N_GENES)
    assert generated.dtype == np.float32
    assert np.all(generated >= 0)
    assert np.array_equal(generated, np.round(generated))
    assert report["epochs"] == 40 and report["likelihood"] == "nb" and report["n_latent"] == 10
    assert report["conditions"] == ["a", "b"] and np.isfinite(report["elbo_train"])


def test_planted_block_is_higher_in_b_and_other_genes_are_not(fitted):
    _, _, labels_gen, _, generated, _ = fitted
    mean_a = generated[labels_gen == "a"].mean(0) + 1e-3
    mean_b = generated[labels_gen == "b"].mean(0) + 1e-3
    log_ratio = np.log(mean_b) - np.log(mean_a)
    assert log_ratio[:BLOCK].min() > np.log(3.0), log_ratio[:BLOCK]
    assert np.abs(log_ratio[BLOCK:]).mean() < np.log(1.5), log_ratio[BLOCK:]


def test_generated_library_and_zero_fraction_match_the_real_cells(fitted):
    counts, labels, labels_gen, library, generated, _ = fitted
    for cond in ("a", "b"):
        real_zero = (counts[labels == cond] == 0).mean()
        gen_zero = (generated[labels_gen == cond] == 0).mean()
        assert abs(gen_zero - real_zero) < 0.1, (cond, gen_zero, real_zero)
    # totals follow the requested libraries (NB around l * rho with sum_g rho = 1)
    ratio = generated.sum(1).sum() / library.sum()
    assert 0.8 < ratio < 1.25, ratio


def test_unseen_label_raises_naming_it():
    counts, labels, _ = _planted_counts()
    with pytest.raises(InputError, match="zebra"):
        scvi_generate(counts, labels, np.array(["a", "zebra"]), np.array([100.0, 100.0]), max_epochs=1)


@pytest.mark.parametrize("bad", ["negative", "fraction", "sparse_negative"])
def test_bad_counts_raise(bad):
    counts, labels, _ = _planted_counts()
    counts = counts.astype(float)
    if bad == "negative":
        counts[3, 4] = -1.0
    elif bad == "fraction":
        counts[3, 4] = 2.5
    else:
        counts = sp.csr_matrix(counts)
        counts.data[0] = -2.0
    with pytest.raises(InputError, match="counts_train"):
        scvi_generate(counts, labels, np.array(["a"]), np.array([100.0]), max_epochs=1)


def test_bad_library_and_shapes_raise():
    counts, labels, _ = _planted_counts()
    with pytest.raises(InputError, match="library_generate"):
        scvi_generate(counts, labels, np.array(["a", "b"]), np.array([100.0, 0.0]), max_epochs=1)
    with pytest.raises(InputError, match="labels_train"):
        scvi_generate(counts, labels[:-1], np.array(["a"]), np.array([100.0]), max_epochs=1)
