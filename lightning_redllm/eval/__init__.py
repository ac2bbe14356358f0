"""Evaluation: held-out perplexity per source and across lengths (length extrapolation)."""
from .perplexity import evaluate_perplexity, format_table, iter_documents, score_sequences

__all__ = ["evaluate_perplexity", "format_table", "iter_documents", "score_sequences"]
