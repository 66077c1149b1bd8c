import numpy as np

from recfm.platform.evaluation.significance import paired_difference
from recfm.ranking.metrics import ndcg_at


def test_ndcg_at_k():
    assert np.allclose(ndcg_at(np.array([0, 1, 9, 10]), 10), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])


def test_a_sure_difference_has_a_tight_interval():
    users = np.repeat(np.arange(20), 5)
    diff, low, high = paired_difference(np.zeros(100), np.full(100, 50), users)
    assert (diff, low, high) == (1.0, 1.0, 1.0)


def test_a_difference_carried_by_one_user_is_not_sure():
    # one user of ten hits every time with a, never with b; the others are equal: the mean difference is positive,
    # but whether that user is drawn decides it, so the interval reaches zero
    users = np.repeat(np.arange(10), 10)
    a = np.where(users == 0, 0, 50)
    diff, low, high = paired_difference(a, np.full(100, 50), users)
    assert diff == 0.1 and low == 0.0 and high > 0.1


def test_the_user_is_the_resampling_unit():
    # the same per-request differences, spread over many users instead of one: a narrower interval
    a = np.where(np.arange(100) < 10, 0, 50)
    _, low_one, high_one = paired_difference(a, np.full(100, 50), np.repeat(np.arange(10), 10))
    _, low_many, high_many = paired_difference(a, np.full(100, 50), np.arange(100))
    assert high_many - low_many < high_one - low_one
