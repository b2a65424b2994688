"""Evaluation: answering a test set through a model (evaluate) and scoring the answers (scoring)."""
