"""What the rules' exact references share: csrc/math/common_grad.h and hd.h in array form."""

from __future__ import annotations

from fusedopt._coeffs import WD_COUPLED


def effective_grad(xp, T, p, g, maximize, wd_mode, weight_decay):
    """math::effective_grad: the gradient negated for maximize, plus coupled weight decay."""
    g = -g if maximize else g
    if wd_mode == WD_COUPLED:
        g = g + T(weight_decay) * p
    return g


def sign_keep_zero(xp, x):
    """math::sign_keep_zero: (x > 0) ? 1 : ((x < 0) ? -1 : x), so +0, -0 and NaN come back
    as they are (numpy.sign would turn -0 into +0)."""
    T = x.dtype.type
    return xp.where(x > 0, T(1), xp.where(x < 0, T(-1), x))


def max_propagate_nan(xp, a, b):
    """math::max_propagate_nan: (a != a) ? a : (a > b ? a : b)."""
    return xp.where((a != a) | (a > b), a, b)
