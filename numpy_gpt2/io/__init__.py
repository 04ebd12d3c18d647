"""Everything that reads or writes files.

- checkpoint: load() any GPT-2 checkpoint, save_checkpoint() in the Hugging Face layout.
- formats/: the file formats load() understands (safetensors, pytorch_model.bin, nanoGPT,
  llm.c, sharded checkpoints) and the safe unpickler.
- hub: resolve_model(), a hub name or a local path to a local directory.
- tokenizer: GPT-2's tokenizer files as a tiktoken Encoding; stream_decode.
- token_files: nanoGPT's uint16 token files (train.bin, val.bin).
- atomic: several files written as one atomic commit; crash recovery; directory locks.
"""
