"""What the rules' exact references share: csrc/math/common_grad.h and hd.h in array form."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED


def effective_grad(xp, T, p, g, maximize, wd_mode, weight_decay):
    """math::effective_grad: the gradient negated for maximize, plus coupled weight decay."""
    g = -g if maximize else g
    if wd_mode == WD_COUPLED:
        g = g + T(weight_decay) * p
    return g


def update_moments(T, c, g, m, v) -> None:
    """math::update_moments: Adam's two moments, in place."""
    m[...] = T(c.beta1) * m + T(c.one_minus_beta1) * g
    v[...] = T(c.beta2) * v + T(c.one_minus_beta2) * (g * g)


def sign_keep_zero(xp, x):
    """math::sign_keep_zero: (x > 0) ? 1 : ((x < 0) ? -1 : x), so +0, -0 and NaN come back
    as they are (numpy.sign would turn -0 into +0)."""
    T = x.dtype.type
    return xp.where(x > 0, T(1), xp.where(x < 0, T(-1), x))


# csrc/math/sumsq.h
NORM_LANES = 32
NORM_BLOCK = 65536


def block_sums(xp, squares):
    """csrc/math/sumsq.h in array form: ``squares`` (float64, one row per sum, of n > 0
    columns) cut into blocks of NORM_BLOCK columns, each summed in NORM_LANES lanes
    accumulated in order and combined by the halving tree. Returns the block sums, shape
    (rows, blocks): callers add them in order."""
    rows, n = squares.shape
    n_blocks = -(-n // NORM_BLOCK)
    per_lane = NORM_BLOCK // NORM_LANES if n_blocks > 1 else -(-n // NORM_LANES)
    padded = xp.zeros((rows, n_blocks * per_lane * NORM_LANES), dtype=xp.float64)
    padded[:, :n] = squares  # padding squares are +0.0, which leave a lane's sum unchanged
    # add.accumulate is sequential along its axis: lane j sums its elements in order.
    lanes = xp.add.accumulate(padded.reshape(rows, n_blocks, per_lane, NORM_LANES), axis=2)[:, :, -1, :]
    width = NORM_LANES // 2
    while width >= 1:
        lanes = lanes[..., :width] + lanes[..., width:2 * width]
        width //= 2
    return lanes[..., 0]


def sums_in_order(xp, block_sums):
    """Each row's block sums added one after another from 0.0 (cpu/driver.cpp's order)."""
    return xp.add.accumulate(block_sums, axis=1)[:, -1]


def max_propagate_nan(xp, a, b):
    """math::max_propagate_nan: (a != a) ? a : (a > b ? a : b)."""
    return xp.where((a != a) | (a > b), a, b)


# csrc/math/sumsq.h (for the adaptive rate's global norm and the trust ratio's per-tensor ones)
NORM_LANES = 32
NORM_BLOCK = 65536


def sum_of_squares_exact(xp, grads) -> float:
    """csrc/math/sumsq.h in array form: 32 lanes per block, each accumulated in order."""
    import numpy as np

    total = 0.0
    for g in grads:
        # The exact sum runs on the host: a device scan would not add in lane order.
        g = g if isinstance(g, np.ndarray) else g.get()
        xp = np
        n = int(g.size)
        if n == 0:
            continue
        n_blocks = -(-n // NORM_BLOCK)
        rows = NORM_BLOCK // NORM_LANES if n_blocks > 1 else -(-n // NORM_LANES)
        sq = xp.zeros(n_blocks * rows * NORM_LANES, dtype=xp.float64)
        gd = g.reshape(-1).astype(xp.float64)
        sq[:n] = gd * gd  # padding squares are +0.0, which leave a lane's sum unchanged
        sq = sq.reshape(n_blocks, rows, NORM_LANES)
        # add.accumulate is sequential along its axis: lane j sums its rows in order.
        lanes = xp.add.accumulate(sq, axis=1)[:, -1, :]
        width = NORM_LANES // 2
        while width >= 1:
            lanes = lanes[:, :width] + lanes[:, width : 2 * width]
            width //= 2
        for block_sum in lanes[:, 0].tolist():  # block sums in call order
            total = total + block_sum
    return total
