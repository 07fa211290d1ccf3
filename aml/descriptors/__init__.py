"""Descriptors: the one extraction function, the one key of stored descriptors, feature files.

Also network fingerprints and the database cache. Mining, testing, teacher features and
extract_features.py all come here."""

from aml.descriptors.cache import cached_descriptors, evict
from aml.descriptors.extraction import (
    DECODE_CHOICES,
    DECODINGS,
    DEFAULT_EXTRACTION,
    ExtractionConfig,
    default_batch_size,
    describe_images,
    effective_workers,
    extract_vectors,
)
from aml.descriptors.files import (
    changed_since_written,
    dataset_images,
    extract_dataset_features,
    feature_file_beside,
    feature_file_key,
    feature_file_name,
    feature_file_settings,
    feature_provenance,
    load_feature_file,
    reusable_feature_file,
    settings_not_its_own,
    write_feature_file,
)
from aml.networks.fingerprint import network_fingerprint
from aml.descriptors.key import DescriptorKey, image_list_key

__all__ = [
    "DECODE_CHOICES",
    "DECODINGS",
    "DEFAULT_EXTRACTION",
    "DescriptorKey",
    "ExtractionConfig",
    "cached_descriptors",
    "changed_since_written",
    "dataset_images",
    "default_batch_size",
    "describe_images",
    "effective_workers",
    "evict",
    "extract_dataset_features",
    "extract_vectors",
    "feature_file_beside",
    "feature_file_key",
    "feature_file_name",
    "feature_file_settings",
    "feature_provenance",
    "image_list_key",
    "load_feature_file",
    "network_fingerprint",
    "reusable_feature_file",
    "settings_not_its_own",
    "write_feature_file",
]
