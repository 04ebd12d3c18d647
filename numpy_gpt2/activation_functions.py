"""The MLP's nonlinearity: every `activation_function` transformers' GPT-2 accepts.

Each entry of ACTIVATIONS is (f, f'): the function and its derivative, both elementwise,
keeping x's dtype. Names and definitions are transformers' (transformers/activations.py,
ACT2CLS; GPT2MLP applies ACT2FN[config.activation_function]); "prelu" and "xielu" are left
out: they have learned parameters, which a GPT-2 checkpoint does not hold.

GPT-2 itself uses the tanh GELU ("gelu_new"); nanoGPT's nn.GELU() is the exact erf GELU
("gelu"). The exact form needs erf, which NumPy lacks: `erf` below is the readable one
(Python's math.erf per element, correctly rounded, slow), `erf_fast` a vectorized one
accurate to ~1e-15 (tested against math.erf), which the fast layers use.

    Phi(x) = 0.5 (1 + erf(x / sqrt 2)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi),  s(x) = 1 / (1 + e^-x)
"""

from __future__ import annotations

import functools
import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate")


# --- erf ------------------------------------------------------------------------------------

_erf_per_element = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, per element with math.erf (exact to
    the last bit of float64, and slow: a Python call per element)."""
    return _erf_per_element(np.asarray(x, np.float64)).astype(np.result_type(x, np.float32))


ERF_ONE = 6.0  # erfc(6) = 2.2e-17 < half an ulp of 1: erf(x) = +-1 in float64 beyond
_TAYLOR_TERMS = 20  # |x| < 1: (-1)^n x^(2n+1) / (n! (2n+1)), n < 20: last term < 1e-20
_PIECES = ((1.0, 3.0, 26), (3.0, ERF_ONE, 22))  # erfc(x) exp(x^2) interpolated on [a, b]


@functools.cache
def _erfc_scaled_pieces():
    """[(a, b, Chebyshev coefficients)] of g(x) = erfc(x) exp(x^2), smooth and slowly varying
    (about 1 / (x sqrt(pi))), interpolated from math.erfc at Chebyshev points of [a, b]."""
    from numpy.polynomial import chebyshev

    def g(a, b):
        return lambda u: np.array([math.erfc(t) * math.exp(t * t) for t in a + (u + 1) * (b - a) / 2])

    return [(a, b, chebyshev.chebinterpolate(g(a, b), degree)) for a, b, degree in _PIECES]


# Abramowitz & Stegun, Handbook of Mathematical Functions, 7.1.26: |error| <= 1.5e-7.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf_fast(x):
    """erf(x), vectorized. float64: absolute error ~2e-15: the Taylor series of erf for
    |x| < 1, then erf = 1 - erfc with erfc(x) = g(x) exp(-x^2) for a Chebyshev interpolant g
    of erfc(x) exp(x^2) (an error in exp(-x^2) scales erfc, which is small there), and +-1
    beyond |x| = 6. float32: Abramowitz & Stegun 7.1.26, erf(|x|) = 1 - (a1 t + ... + a5 t^5)
    exp(-x^2), t = 1 / (1 + p |x|): error <= 1.5e-7 in exact arithmetic, 5.3e-7 measured
    in float32 arithmetic (float32's own rounding of values near 1 is 6e-8), ~10x faster."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return _erf_float32(x)
    return _erf_float64(x)


def _erf_float32(x):
    a = np.abs(x)
    t = 1.0 / (1.0 + _AS_P * a)
    poly = np.full_like(a, _AS_A[-1])
    for c in reversed(_AS_A[:-1]):
        poly *= t
        poly += c
    poly *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(1.0, poly, out=poly)
    return np.copysign(poly, x, out=poly)


def _erf_float64(x):
    from numpy.polynomial import chebyshev

    x64 = np.asarray(x, np.float64)
    a = np.abs(x64)
    out = np.ones_like(a)
    small = a < 1.0
    z = a[small]
    z2 = z * z
    series = np.zeros_like(z)
    for n in reversed(range(_TAYLOR_TERMS)):  # Horner in -x^2 of 1 / (n! (2n+1))
        series = series * -z2 + 1.0 / (math.factorial(n) * (2 * n + 1))
    out[small] = (2.0 / math.sqrt(math.pi)) * z * series
    for lo, hi, coef in _erfc_scaled_pieces():
        part = (a >= lo) & (a < hi)
        t = a[part]
        out[part] = 1.0 - chebyshev.chebval((2.0 * t - (lo + hi)) / (hi - lo), coef) * np.exp(-t * t)
    out = np.copysign(out, x64)
    return out.astype(np.result_type(x, np.float32), copy=False)


def _gelu_erf(x, erf_=erf):
    return 0.5 * x * (1.0 + erf_(x * (1.0 / math.sqrt(2.0))))


def _normal_pdf(x):
    return np.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


# --- the functions, each with its derivative -------------------------------------------------

def gelu_erf(x, erf_=erf):
    """gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))   (nn.GELU(), "gelu", "gelu_python")."""
    return _gelu_erf(x, erf_)


def gelu_erf_derivative(x, erf_=erf):
    """gelu'(x) = Phi(x) + x phi(x)."""
    return 0.5 * (1.0 + erf_(x * (1.0 / math.sqrt(2.0)))) + x * _normal_pdf(x)


def gelu_10(x, erf_=erf):
    """clip(gelu(x), -10, 10)   ("gelu_10")."""
    return np.clip(gelu_erf(x, erf_), -10.0, 10.0)


def gelu_10_derivative(x, erf_=erf):
    """gelu'(x) where -10 <= gelu(x) <= 10, else 0 (torch.clip passes the boundary's gradient)."""
    g = gelu_erf(x, erf_)
    return np.where((g >= -10.0) & (g <= 10.0), gelu_erf_derivative(x, erf_), 0.0).astype(x.dtype)


def tanh_gelu(x, c=SQRT_2_OVER_PI):
    """0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi)   (GPT-2's "gelu_new";
    "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate" are the same formula)."""
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * (x * x * x))))


def tanh_gelu_derivative(x, c=SQRT_2_OVER_PI):
    """0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2), t = tanh(c (x + 0.044715 x^3))."""
    t = np.tanh(c * (x + 0.044715 * (x * x * x)))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * (x * x))


FAST_GELU_C = 0.7978845608  # transformers' FastGELUActivation rounds sqrt(2/pi) to 10 digits


def gelu_fast_approx(x):
    """0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))   ("gelu_fast")."""
    return tanh_gelu(x, FAST_GELU_C)


def gelu_fast_approx_derivative(x):
    return tanh_gelu_derivative(x, FAST_GELU_C)


def sigmoid(x):
    """s(x) = 1 / (1 + e^-x) = 0.5 (1 + tanh(x / 2)) (no overflow for any x)   ("sigmoid");
    s' = s (1 - s)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sigmoid_derivative(x):
    s = sigmoid(x)
    return s * (1.0 - s)


def silu(x):
    """x s(x)   ("silu", "swish"); derivative s + x s (1 - s)."""
    return x * sigmoid(x)


def silu_derivative(x):
    s = sigmoid(x)
    return s + x * s * (1.0 - s)


def quick_gelu(x):
    """x s(1.702 x)   ("quick_gelu"); derivative s + 1.702 x s (1 - s), s = s(1.702 x)."""
    return x * sigmoid(1.702 * x)


def quick_gelu_derivative(x):
    s = sigmoid(1.702 * x)
    return s + 1.702 * x * s * (1.0 - s)


def relu(x):
    """max(x, 0)   ("relu"); derivative 1 for x > 0, else 0 (torch's choice at 0)."""
    return np.maximum(x, 0.0).astype(x.dtype, copy=False)


def relu_derivative(x):
    return (x > 0).astype(x.dtype)


def relu2(x):
    """max(x, 0)^2   ("relu2"); derivative 2 max(x, 0)."""
    r = relu(x)
    return r * r


def relu2_derivative(x):
    return 2.0 * relu(x)


def relu6(x):
    """min(max(x, 0), 6)   ("relu6"); derivative 1 for 0 < x < 6, else 0."""
    return np.clip(x, 0.0, 6.0)


def relu6_derivative(x):
    return ((x > 0) & (x < 6)).astype(x.dtype)


LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative_slope


def leaky_relu(x):
    """x for x > 0, else 0.01 x   ("leaky_relu"); derivative 1 or 0.01."""
    return np.where(x > 0, x, LEAKY_SLOPE * x).astype(x.dtype, copy=False)


def leaky_relu_derivative(x):
    return np.where(x > 0, 1.0, LEAKY_SLOPE).astype(x.dtype)


def tanh(x):
    """tanh(x)   ("tanh"); derivative 1 - tanh^2(x)."""
    return np.tanh(x)


def tanh_derivative(x):
    t = np.tanh(x)
    return 1.0 - t * t


def mish(x):
    """x tanh(softplus(x)), softplus(x) = log(1 + e^x)   ("mish");
    derivative tanh(sp) + x (1 - tanh^2(sp)) s(x)."""
    return x * np.tanh(np.logaddexp(0.0, x))


def mish_derivative(x):
    t = np.tanh(np.logaddexp(0.0, x))
    return t + x * (1.0 - t * t) * sigmoid(x)


LAPLACE_MU, LAPLACE_SIGMA = 0.707107, 0.282095  # transformers' LaplaceActivation defaults


def laplace(x, erf_=erf):
    """0.5 (1 + erf((x - mu) / (sigma sqrt 2))), mu = 0.707107, sigma = 0.282095   ("laplace");
    derivative phi((x - mu) / sigma) / sigma."""
    return 0.5 * (1.0 + erf_((x - LAPLACE_MU) * (1.0 / (LAPLACE_SIGMA * math.sqrt(2.0)))))


def laplace_derivative(x):
    return _normal_pdf((x - LAPLACE_MU) * (1.0 / LAPLACE_SIGMA)) * (1.0 / LAPLACE_SIGMA)


def identity(x):
    """x   (transformers' "linear" activation; not layers.linear, the affine map); derivative 1."""
    return x.copy()


def identity_derivative(x):
    return np.ones_like(x)


_GELU = (gelu_erf, gelu_erf_derivative)
_TANH_GELU = (tanh_gelu, tanh_gelu_derivative)
ACTIVATIONS = {
    "gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU, "gelu_python_tanh": _TANH_GELU,
    "gelu_accurate": _TANH_GELU, "gelu": _GELU, "gelu_python": _GELU,
    "gelu_10": (gelu_10, gelu_10_derivative), "gelu_fast": (gelu_fast_approx, gelu_fast_approx_derivative),
    "quick_gelu": (quick_gelu, quick_gelu_derivative), "relu": (relu, relu_derivative),
    "relu2": (relu2, relu2_derivative), "relu6": (relu6, relu6_derivative),
    "leaky_relu": (leaky_relu, leaky_relu_derivative), "silu": (silu, silu_derivative),
    "swish": (silu, silu_derivative), "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative), "mish": (mish, mish_derivative),
    "laplace": (laplace, laplace_derivative), "linear": (identity, identity_derivative),
}


USES_ERF = ("gelu", "gelu_python", "gelu_10", "laplace")


def activation(name: str):
    """(f, f') for an activation_function name (see ACTIVATIONS)."""
    return ACTIVATIONS[name]


def activation_fast(name: str):
    """(f, f') for the fast layers: the same functions, with erf_fast in place of the
    per-element math.erf (the tanh GELU has its own in-place fast forms in fast/forward.py)."""
    f, df = ACTIVATIONS[name]
    if name in USES_ERF:
        f = functools.partial(f, erf_=erf_fast)
        df = functools.partial(df, erf_=erf_fast) if name != "laplace" else df
    return f, df
