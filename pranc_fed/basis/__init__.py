"""The PRANC basis: K pseudo-random frozen networks that anyone regenerates from one seed.

Math
----
Flatten a model's covered parameters (every weight and bias of its conv and linear
layers, in ``named_parameters()`` order) into theta in R^d. PRANC writes

    theta = theta0 + B @ alpha,        B in R^(d x K),   alpha in R^K,

and trains only alpha. By the chain rule the gradient of a loss L is

    dL/dalpha = B^T (dL/dtheta),

so a training step needs one ``expand`` (B @ alpha) and one ``project`` (B^T g).
Both are linear, so averaging alphas averages the models: theta(mean alpha) =
mean theta(alpha). Neither ever needs the d x K matrix in memory: they stream over
row chunks that fit a memory budget, or use a materialised copy when it fits.

Spec, version 1 (``SPEC_VERSION``): the definition every device must reproduce bit for bit
------------------------------------------------------------------------------------------
(docs/spec.md is the standalone text, with the per-layer rule, the fingerprint recipe and the
limits; tests/spec_vectors.json holds its expected values.)

For parameter index i (0 <= i < d), basis index j (0 <= j < K) and a 64-bit seed:

    key     = (seed mod 2^32, seed div 2^32)
    counter = (i div 4, j, stream, 0)            stream 0: basis B, stream 1: theta0 (j = 0)
    w       = Philox4x32-10(counter, key)[i mod 4]   (Salmon et al. 2011; Random123,
                                                      cuRAND and Triton's tl.rand)
    m       = w div 2^8                           24 random bits
    u       = (2m + 1 - 2^24) * 2^-24             odd multiple of 2^-24 in (-1, 1): exact in float32
    B[i, j] = float32(b_i * u)                    one IEEE multiply, round to nearest
    theta0_i = float32(b_i * u(stream=1, j=0))

b_i = float32(1 / sqrt(fan_in)) of the layer that owns i: PyTorch's default init bound for
conv and linear weights and biases, so each column of B (and theta0) is a freshly
initialised network. Only integer arithmetic and one float multiply are involved, so the
bits do not depend on the device, thread count, chunking or the order indices are asked in.

Layouts. ``global`` (the paper): every column spans all d parameters. ``per_layer``
(block diagonal): layer l owns the columns [c_l, c_l + K_l) and B[i, j] = 0 when i and
j belong to different layers. K_l is proportional to the layer's parameter count
(largest remainder, at least 1 each); the non-zero elements keep the values above.

Re-seeded subspaces (``pranc.reseed_period`` P > 0). Rounds come in periods of P; period p uses
the basis above with seed_p = (seed + p * 0x9E3779B97F4A7C15) mod 2^64 (``period_seed``; seed_0 =
seed). At the end of period p every party folds the period's final alpha a_p into theta0:

    theta0_(p+1) = float32( float64(theta0_p) + sum_j float64(B_p[:, j]) * float64(a_p[j]) )

(``Basis.fold``: exact float32 values of B_p, float64 products and sums, one rounding at the end, so
the result does not depend on caches, chunking or thread count), then restarts from alpha = 0 in
B_(p+1). theta0_0 is the seeded theta0 below. The model after n periods is therefore fixed by the
seed and the history (a_0, ..., a_(n-1)) plus the current alpha.

theta0 and alpha = 0: training starts from a standard random init (theta0) and moves in
the K-dimensional random subspace spanned by B. The official PRANC code instead has no
theta0 and initialises alpha so that B @ alpha is a fresh network; a seeded theta0 gives
the same start with an all-zero alpha, which also makes averaged and sparse alphas natural.

Engines, caches and precision (none of them changes the definition above)
-------------------------------------------------------------------------
* Generation on the CPU runs the same Philox compiled by numba (``philox_numba``: each counter's
  words stay in registers, row groups spread over the cores), about 5x the previous engine, which
  remains as the fallback where numba is missing: numpy uint64 arithmetic, a few thousand
  counters at a time in L2-sized chunks over ``torch.get_num_threads()`` threads, the first two
  rounds computed on the (row group) and (column) vectors alone because the counter's c1, c2, c3
  do not depend on the row. Other devices use the torch reference
  (``philox4x32``); a CUDA device with Triton uses ``triton_basis``, which generates B inside
  the expand/project kernels and never stores it.
* ``cache``: ``memory`` keeps the non-zero blocks of B in this process; ``disk`` writes them
  once to a read-only file keyed by the fingerprint (``$PRANC_FED_CACHE/basis``, default
  ``~/.cache/pranc-fed/basis``; a 4096-byte JSON header, then the blocks row-major in
  ``cache_dtype``), written atomically under a lock, then memory-maps it read-only, so every
  process on the machine shares one copy through the page cache; ``none`` streams
  freshly generated chunks under ``budget_mb``; ``auto`` is ``disk`` on the CPU and ``memory``
  on a GPU when B fits the budget, else ``none`` (``memory`` too for a re-seeded period's basis,
  and where the cache folder is full or read-only). A memory or disk cache must fit ``budget_mb``.
* ``cache_dtype``: ``float32`` stores the exact values. ``bfloat16`` / ``float16`` store
  each exact value rounded to nearest-even in that format (half the bytes); products still
  accumulate in float32 with float32 alpha and gradients, so the basis in use is the rounded
  matrix, a fixed perturbation of B of at most 2^-8 (bf16) or 2^-11 (fp16) relative per
  element. The fingerprint names the exact basis; a rounded cache is an approximation of it.
* Products: a float32 B (cached or a streamed chunk) is one BLAS matrix-vector call. A
  bf16/fp16 cache is converted to float32 one cache-sized tile at a time, its rows split over
  ``torch.get_num_threads()`` worker threads that each run single-threaded torch ops (no
  OpenMP barrier per small op, which matters on a busy machine).
"""

from .core import CACHE_DTYPES, CACHES, ENGINES, Basis, expand_differentiable
from .generator import (SPEC_VERSION, STREAM_BASIS, STREAM_THETA0, _fill_values, _fill_values_numpy,
                        _philox_grid, _unit_block_torch, period_seed, philox4x32, uniform_bits_to_unit, unit_block)
from .layout import (LAYOUTS, full_rank_upto, layout_name, Block, Fingerprint, FingerprintMismatch, Segment, basis_fingerprint, covered_segments,
                     make_blocks, split_columns)

__all__ = ["CACHES", "CACHE_DTYPES", "ENGINES", "LAYOUTS", "SPEC_VERSION", "STREAM_BASIS", "STREAM_THETA0", "Basis",
           "Block", "Fingerprint", "FingerprintMismatch", "Segment", "basis_fingerprint", "covered_segments",
           "expand_differentiable", "full_rank_upto", "layout_name", "make_blocks", "period_seed", "philox4x32", "split_columns",
           "uniform_bits_to_unit", "unit_block",
           "_fill_values", "_fill_values_numpy", "_philox_grid", "_unit_block_torch"]
