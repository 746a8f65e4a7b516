"""Evaluation: answer-matching metrics, confidence intervals and the results file (``report``)."""
