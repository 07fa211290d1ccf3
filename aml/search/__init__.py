"""Asymmetric search outside the benchmarks: a database encoded once by the teacher into a
store (`build_store`), opened for search (`open_database`) and queried with images encoded by
the student (`query_database`), or by the student exported to ONNX (`query_database_onnx`).

The store's folder layout is `aml.search.store`'s; the searches, exact or with an IVF-PQ
index (`aml.search.faiss_index`), are `SearchDatabase`'s; the checks that a student belongs to
the store's teacher are `aml.search.query`'s.
"""

from aml.search.database import IvfPq, SearchDatabase, StoreError, build_ivfpq
from aml.search.query import check_onnx_student, check_teacher, query_database, query_database_onnx
from aml.search.store import build_store, check_store_folder, list_images, open_database

__all__ = [
    "IvfPq",
    "SearchDatabase",
    "StoreError",
    "build_ivfpq",
    "build_store",
    "check_store_folder",
    "check_onnx_student",
    "check_teacher",
    "list_images",
    "open_database",
    "query_database",
    "query_database_onnx",
]
