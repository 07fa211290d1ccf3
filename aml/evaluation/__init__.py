"""Testing: whitening, search, re-ranking and the revisited Oxford/Paris metrics."""

from aml.evaluation.metrics import compute_ap, compute_map, evaluate_ranks, format_results
from aml.evaluation.reranking import Reranking, alpha_query_expansion, database_augmentation
from aml.evaluation.search import rank_database
from aml.evaluation.whitening import WhiteningError, check_whitening, pcawhitenlearn, whitenapply, whitenlearn

__all__ = ["compute_ap", "compute_map", "evaluate_ranks", "format_results",
           "rank_database", "Reranking", "alpha_query_expansion", "database_augmentation",
           "pcawhitenlearn", "whitenapply", "whitenlearn", "check_whitening", "WhiteningError"]
