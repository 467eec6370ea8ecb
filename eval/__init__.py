"""Evaluation: zero-shot classification, retrieval, the task registry, effective robustness."""
