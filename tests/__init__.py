"""The trainer's tests, one file per section of train_gpt2.py or module of llmc/ (test_gpt2.py, the check against
the reference, stays at the repository's root, as llm.c's test_gpt2.c); tests/helpers.py holds what they share."""
