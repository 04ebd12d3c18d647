"""Readers and writers of the checkpoint file formats numpy_gpt2.load understands.

- detect: which format a path holds, and its tensors.
- openai_tf (OpenAI's 2019 TensorFlow release) on tf_table (CRC-32C, protobuf, the LevelDB table).
- safetensors, shards, torch_bin (with safe_pickle: never runs a pickle), nanogpt, llmc.
- tensor_copy: the checked, chunked copy from file bytes into arrays that every reader uses.
"""
