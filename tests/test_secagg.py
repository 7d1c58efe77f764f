"""Pairwise masking (secagg.py): the masks cancel in the sum, hide each input, and the fixed-point
code decodes the sum within its resolution."""

import numpy as np

from pranc_fed.secagg import dequantize_sum, key_pair, mask, masked_input, quantize, shared_seed, unmask_sum


def test_masks_cancel_in_the_sum_and_hide_each_input():
    rng = np.random.default_rng(0)
    n, size = 5, 3000
    updates = [rng.uniform(-0.5, 0.5, size).astype(np.float32) for _ in range(n)]
    keys = [key_pair() for _ in range(n)]
    publics = {i: pk for i, (_, pk) in enumerate(keys)}
    codes = [quantize(u, 1.0, n) for u in updates]
    masked = [masked_input(c, i, keys[i][0], publics) for i, c in enumerate(codes)]
    total = dequantize_sum(unmask_sum(masked), 1.0, n)
    # fixed-point resolution 2 / levels per client, then float32 rounding of sums up to n
    np.testing.assert_allclose(total, np.sum(updates, axis=0), atol=n * 2.0 / ((2**32 - 1) // n) + n * 1.2e-7)
    for c, y in zip(codes, masked):
        assert np.mean(c == y) < 0.01  # every coordinate masked
        assert abs(y.astype(np.float64).mean() / 2**32 - 0.5) < 0.02  # uniform-looking, not the codes' range
    # Without one client's masked vector the rest do not decode to anything near the partial sum.
    partial = dequantize_sum(unmask_sum(masked[1:]), 1.0, n)
    assert np.mean(np.abs(partial - np.sum(updates[1:], axis=0))) > 0.1


def test_both_ends_of_a_pair_derive_the_same_mask_and_other_pairs_differ():
    (a, pa), (b, pb), (c, pc) = key_pair(), key_pair(), key_pair()
    assert shared_seed(a, pb) == shared_seed(b, pa) != shared_seed(a, pc)
    np.testing.assert_array_equal(mask(shared_seed(a, pb), 100), mask(shared_seed(b, pa), 100))


def test_codes_of_n_clients_never_wrap():
    n = 7
    top = quantize(np.full(10, 5.0, np.float32), 1.0, n)  # clipped to the range's top
    assert int(top[0]) * n < 2**32
    np.testing.assert_allclose(dequantize_sum(top * np.uint32(n), 1.0, n), n * 1.0, rtol=1e-6)
