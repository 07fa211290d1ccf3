"""Testing: whitening, rankings, re-ranking (αQE, DBA, SuperGlobal), the revisited Oxford/Paris
metrics, and the test pipeline as a library call (`evaluate`, with `TestSettings` in and
`DatasetResult` out)."""

from aml.evaluation.metrics import (
    compute_ap,
    compute_map,
    compute_map_and_print,
    evaluate_positions,
    evaluate_ranks,
    format_results,
)
from aml.evaluation.ranking import rank_database
from aml.evaluation.reranking import Reranking, alpha_query_expansion, database_augmentation, search_with_expansion
from aml.evaluation.results import DatasetResult, DistractorsAdded, SearchResult, SkippedImages
from aml.evaluation.superglobal import Shortlist, SuperGlobal, superglobal_rerank, superglobal_shortlist
from aml.evaluation.plan import TestSettings
from aml.evaluation.testing import evaluate
from aml.evaluation.whitening import WhiteningError, check_whitening, pcawhitenlearn, whitenapply, whitenlearn

__all__ = [
    "compute_ap",
    "compute_map",
    "compute_map_and_print",
    "evaluate_ranks",
    "evaluate_positions",
    "format_results",
    "rank_database",
    "Reranking",
    "alpha_query_expansion",
    "database_augmentation",
    "search_with_expansion",
    "SuperGlobal",
    "Shortlist",
    "superglobal_rerank",
    "superglobal_shortlist",
    "DatasetResult",
    "DistractorsAdded",
    "SearchResult",
    "SkippedImages",
    "TestSettings",
    "evaluate",
    "pcawhitenlearn",
    "whitenapply",
    "whitenlearn",
    "check_whitening",
    "WhiteningError",
]
