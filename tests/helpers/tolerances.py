"""Every tolerance the tests use, with the measured worst case each was set from.

The form is max |ours - oracle| <= RTOL * max |oracle| + ATOL unless a comment says
otherwise; float32 and float64 each get their own. A bound keeps a margin of >= 4x over the
worst error measured (on the configs and hypothesis examples of the tests that use it) and
stays far below what a real bug costs: a wrong formula (the erf GELU, the unbiased variance,
a missing 1/sqrt(D), a missing backward term) is off by > 1e-4 relative.
"""

import numpy as np

# --- one layer against transformers' module (tests/math/test_layers.py) -----------------------
# float32: both sides round at ~6e-8 per op but sum in different orders (BLAS blocking,
# tanh/exp implementations). Measured worst over ~400 examples per test: 2.2e-5 for the
# attention probabilities (scores of O(100) carry ~1e-5 absolute rounding into the softmax),
# <= 1.2e-5 for the rest. float64: ~1.1e-16 per op; measured worst 4e-14 relative.
LAYER_RTOL = {np.float32: 1e-4, np.float64: 1e-12}
LAYER_ATOL = {np.float32: 1e-6, np.float64: 1e-14}

# --- one layer's backward against autograd (tests/math/test_layers_backward.py) ---------------
# Measured worst over ~1000 examples per test (float64 / float32): elementwise and last-axis
# ops ~2e-16 / 2e-7, linear ~4e-16 / 6e-7, attention, self-attention and block at the largest
# scales (near one-hot softmaxes) ~4e-14 / 2.5e-5.
LAYER_BACKWARD_RTOL = {np.float32: 1e-4, np.float64: 1e-11}
# Self-attention and the block in float32 at the largest scales: scores of O(100) carry ~1e-5
# absolute rounding into near one-hot softmax rows, whose gradient then cancels terms ~1e3
# larger than itself (dS = P (dP - rowsum)); measured worst 1.03e-4 over ~3000 examples.
LAYER_BACKWARD_RTOL_ATTENTION = {np.float32: 3e-4, np.float64: 1e-11}

# --- the whole model's logits against GPT2LMHeadModel (tests/math/test_model.py) --------------
# RTOL alone, of max |logit|: float32 sums over 768..3072 terms per layer in a different order
# than torch, ~1e-7 relative per op adding up over layers; measured worst ~3e-6 relative
# (6.6e-4 absolute on logits up to 240). float64: ~1e-14 relative.
MODEL_RTOL = {np.float32: 2e-5, np.float64: 1e-11}

# --- loss_and_grads against autograd (tests/math/test_backward_model.py) -----------------------
# float32: logits of O(10..100) (near one-hot rows) and each block's attention, summing over up
# to N = B*T = 1024 rows and 768..3072 features in another order than torch; measured worst
# 1.5e-5 (distilgpt2-shaped, h.0.ln_1.bias). float64: measured worst 4.3e-14.
GRADIENT_RTOL = {np.float32: 1e-4, np.float64: 1e-11}
LOSS_RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # the loss, relative (and >= 1e-5 absolute)

# --- fast paths against the readable ones (tests/math/test_fast_paths.py) ---------------------
# The two round differently (sum order, x/sqrt(D) vs x*(1/sqrt(D)), normalizing before or
# after `@ v`), never by more than the forward pass against torch does.
FAST_RTOL = {np.float32: 2e-5, np.float64: 1e-11}
FAST_ATOL = {np.float32: 1e-6, np.float64: 1e-13}
# the fast backward against the readable backward (tests/math/test_fast_backward.py), relative
FAST_BACKWARD_RTOL = {np.float32: 2e-5, np.float64: 1e-12}

# --- kv cache, padding (tests/math/test_kv_cache.py, test_padding.py) -------------------------
# Relative to max |logit|: a cached or padded run sums the same terms in another order
# (fewer or more keys per matmul); measured worst 4e-5 in float32, 3e-14 in float64.
KV_CACHE_RTOL = {np.float32: 2e-4, np.float64: 1e-11}
PADDING_RTOL = {np.float32: 2e-4, np.float64: 1e-11}

# --- OpenAI's TensorFlow checkpoint against its expected.json (tests/io/test_openai_tf.py) -----
# expected.json holds float32-rounded logits (|logit| < 6) of a float64 forward: our float64
# logits differ by that rounding only (measured 1.1e-7); float32 ones also by the float32
# forward's own rounding (measured 1.1e-6).
OPENAI_EXPECTED_ATOL = {np.float32: 1e-5, np.float64: 1e-6}

# --- config variants against transformers (tests/math/test_config_variants.py) ----------------
# (rtol, atol) of the logits and gradients for activations, epsilons and scalings other than
# GPT-2's; measured worst 4.4e-14 (float64) and 2.6e-5 (float32) relative to max |logit|.
CONFIG_VARIANT_TOL = {np.float64: (1e-10, 1e-9), np.float32: (2e-5, 2e-4)}

# --- named activations and gradients (tests/debug) ----------------------------------------------
# (rtol, atol) per name against the same intermediate of transformers: measured worst ~1e-6
# of the tensor's max in float32, ~1e-15 in float64.
ACTIVATION_TOL = {np.float32: (2e-5, 1e-6), np.float64: (1e-12, 1e-14)}
# (rtol, atol) per gradient name against autograd: measured worst 6e-6 of the tensor's max in
# float32, 4e-15 in float64.
GRAD_DUMP_TOL = {np.float32: (5e-5, 1e-7), np.float64: (1e-12, 1e-15)}
# compare.py's flags for float64 dumps that must agree (the same as GRAD_DUMP_TOL's float64)
FLOAT64_COMPARE_FLAGS = ["--atol", "1e-11", "--rtol", "1e-11"]

# --- AdamW against torch.optim.AdamW (tests/training/test_optim.py) ----------------------------
# float64: the same operations in the same order, so rounding only. float32: rounding differs
# (torch's fused kernels), and Adam divides by sqrt(v) + eps, which amplifies the relative error
# of small updates; 12 steps of lr <= 1e-2 move a weight by at most ~0.1, so an absolute 2e-6 is
# ~100 float32 ulps of the 0.02-sized weights.
ADAMW_TOL = {np.float32: dict(rtol=1e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
