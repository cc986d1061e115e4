from __future__ import annotations

import numpy as np
import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.evaluate import cosine_fidelity, load_stsb, pool, spearman


def test_spearman_with_ties_matches_hand_computation() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks of x with a tie: [1, 2.5, 2.5, 4]; y ranks [1, 2, 3, 4] → Pearson of the ranks
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert spearman(np.array([1.0, 5.0, 5.0, 9.0]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(expected)


def test_pooling_ignores_padding_and_fidelity() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 1.0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[1.0, 0.0]])
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_fidelity(a, 3 * a) == pytest.approx(1.0)
    assert cosine_fidelity(a, np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(0.0)


def test_load_stsb_format(tmp_path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text('main-captions\tMSRvid\t2012test\t0001\t5.000\tA "man" plays.\tA man plays.\textra\n'
                    "main-news\theadlines\t2013\t0002\t0.500\tStocks fell.\tCats sleep.\n")
    pairs = load_stsb(path)
    assert pairs.first == ['A "man" plays.', "Stocks fell."] and list(pairs.gold) == [5.0, 0.5]
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_stsb(tmp_path / "missing.csv")
