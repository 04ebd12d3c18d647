"""Readers and writers of the checkpoint file formats numpy_gpt2.load understands."""
