"""Looking inside GPT-2: TransformerLens' interpretability tools as pure functions over our
weights and activation caches (hook names: numpy_gpt2.interp.names). No framework is imported.
One import line per module."""

from numpy_gpt2.interp.names import from_transformer_lens, from_transformer_lens_name, to_transformer_lens, to_transformer_lens_name
from numpy_gpt2.interp.weights import fold_layer_norm, center_writing_weights, center_unembed, fold_value_biases, process_weights
from numpy_gpt2.interp.resid import decompose_resid, accumulated_resid, apply_ln_to_stack, logit_lens, logit_attrs
from numpy_gpt2.interp.heads import head_results, detect_heads, repeated_random_tokens, induction_scores
from numpy_gpt2.interp.patching import patch_sweep, attribution_patch
