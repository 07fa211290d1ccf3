"""The test pipeline behind test.py: symmetric and asymmetric retrieval on test sets,
with optional learned whitening, returning every number as a dict.

Asymmetric testing: the database is encoded by the teacher, the (cropped) queries by the
student; with whitening, the teacher's whitening applies to both sides. Each network
uses its own mean/std and its own multi-scale power.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.download import download_file
from aml.data.paths import data_subdir
from aml.data.testsets import configdataset, prepare_test_set, protocol_of, query_and_database_paths
from aml.data.trainsets import load_whitening_db
from aml.evaluation.metrics import evaluate_ranks, format_results
from aml.evaluation.search import rank_database
from aml.evaluation.whitening import whitenapply, whitenlearn
from aml.features import cached_descriptors, describe_images, network_fingerprint
from aml.networks.checkpoint import load_plain_file, save_plain_file
from aml.networks.pretrained import PRETRAINED
from aml.networks.retrieval_net import ImageRetrievalNet, multiscale_power

log = logging.getLogger(__name__)
Whitening = Tuple[np.ndarray, np.ndarray]


@dataclass
class TestSettings:
    """Everything test.py's flags decide besides the networks."""

    datasets: Sequence[str] = ("roxford5k", "rparis6k")
    image_size: int = 1024
    scales: Sequence[float] = (1,)
    whitening: Optional[str] = None
    workers: int = 8
    device: str = "cpu"
    batch_size: Optional[int] = None
    amp: bool = False
    data_root: Optional[str] = None
    cache: bool = True
    extract_options: Dict[str, Any] = field(default_factory=dict)

    def extraction(self) -> Dict[str, Any]:
        return dict(workers=self.workers, device=self.device, batch_size=self.batch_size, amp=self.amp,
                    **self.extract_options)


@dataclass
class Encoder:
    """A network with the name and the file it came from (for whitening caches)."""

    net: ImageRetrievalNet
    name: str
    path: Optional[Path] = None


def htime(seconds: float) -> str:
    """'1h 0m 5s' / '42s', dropping leading zero units (the original's format)."""
    seconds = int(round(seconds))
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts, started = [], False
    for suffix, size in units:
        value, seconds = divmod(seconds, size)
        if value or started or suffix == "s":
            started = True
            parts.append(f"{value}{suffix}")
    return " ".join(parts)


def whitening_cache_path(encoder: Encoder, whitening_set: str, multiscale: bool, image_size: int,
                         data_root: Optional[str]) -> Path:
    """``<checkpoint>_<SET>_whiten[_ms]_<imsize>.pth`` next to a checkpoint file, else in
    ``<data_root>/whiten/`` for named and off-the-shelf networks."""
    stem = f"_{whitening_set}_whiten{'_ms' if multiscale else ''}_{image_size}.pth"
    if encoder.path is not None:
        return encoder.path.with_name(encoder.path.name + stem)
    return data_subdir(data_root, "whiten") / (encoder.name + stem)


def learn_whitening(encoder: Encoder, whitening_set: str, settings: TestSettings) -> Whitening:
    """Learn Lw on the whitening set's images, encoded like the test images."""
    db = load_whitening_db(whitening_set, settings.data_root)
    msp = multiscale_power(encoder.net, list(settings.scales))
    log.info(">> %s: Learning whitening with %s...", whitening_set, encoder.name)
    vecs = describe_images(encoder.net, db["images"], settings.image_size, settings.scales, msp, **settings.extraction())
    return whitenlearn(vecs, db["qidxs"], db["pidxs"])


def get_whitening(encoder: Encoder, whitening_set: str, settings: TestSettings, published: bool = True) -> Whitening:
    """Whitening for ``encoder``: the checkpoint's meta Lw, else the published file of a
    published student (``published``), else a cache file, else learned and cached."""
    multiscale = len(settings.scales) > 1
    stored = encoder.net.meta.get("Lw", {}).get(whitening_set)
    if stored:
        log.info(">> %s: Whitening is precomputed, loading it...", whitening_set)
        entry = stored["ms" if multiscale else "ss"]
        return np.asarray(entry["m"]), np.asarray(entry["P"])
    entry = PRETRAINED.get(encoder.name)
    if published and entry is not None and entry.whitening_url:
        path = download_file(entry.whitening_url, data_subdir(settings.data_root, "model") / entry.whitening_url.rsplit("/", 1)[1])
        data = load_plain_file(path)
        return np.asarray(data["m"]), np.asarray(data["P"])
    cache = whitening_cache_path(encoder, whitening_set, multiscale, settings.image_size, settings.data_root)
    if cache.exists():
        data = load_plain_file(cache)
        log.info(">> %s: whitening read from %s", whitening_set, cache)
        return np.asarray(data["m"]), np.asarray(data["P"])
    m, P = learn_whitening(encoder, whitening_set, settings)
    save_plain_file({"m": m, "P": P}, cache)
    log.info(">> %s: Saving to %s...", whitening_set, cache)
    return m, P


def _search(database: np.ndarray, queries: np.ndarray, dataset: str, gnd: List[Dict[str, Any]], device: str) -> Dict[str, Any]:
    ranks = rank_database(database, queries, device=device)
    return evaluate_ranks(dataset, ranks, gnd, protocol_of(dataset))


def evaluate(student: Encoder, settings: TestSettings, teacher: Optional[Encoder] = None,
             printer: Callable[[str], None] = print) -> Dict[str, Any]:
    """Test ``student`` (symmetric) or student vs ``teacher`` (asymmetric, when given) on
    every data set of ``settings``; print the original's lines and return
    ``{dataset: {'plain': results, 'whiten': results}}``."""
    database_encoder = teacher or student
    if teacher is not None and teacher.net.meta["outputdim"] != student.net.meta["outputdim"]:
        raise ValueError(f"asymmetric test needs equal dimensions: student {student.name} is "
                         f"{student.net.meta['outputdim']}-d, teacher {teacher.name} {teacher.net.meta['outputdim']}-d")
    for encoder in {id(e): e for e in (student, database_encoder)}.values():
        encoder.net.to(settings.device).eval()
    scales = list(settings.scales)
    lw = get_whitening(database_encoder, settings.whitening, settings, published=teacher is None) if settings.whitening else None
    cache_dir = data_subdir(settings.data_root, "features") / "cache" if settings.cache else None
    fingerprint = network_fingerprint(database_encoder.net) if settings.cache else None
    results: Dict[str, Any] = {}
    for dataset in settings.datasets:
        start = time.time()
        printer(f">> {dataset}: Extracting...")
        prepare_test_set(dataset, settings.data_root)
        cfg = configdataset(dataset, data_subdir(settings.data_root, "test"))
        images, queries, bbxs = query_and_database_paths(cfg)
        vecs = cached_descriptors(database_encoder.net, images, settings.image_size, scales,
                                  multiscale_power(database_encoder.net, scales), cache_dir, dataset,
                                  fingerprint, **settings.extraction())
        qvecs = describe_images(student.net, queries, settings.image_size, scales,
                                multiscale_power(student.net, scales), bbxs=bbxs, **settings.extraction())
        printer(f">> {dataset}: Evaluating...")
        entry = {"plain": _search(vecs, qvecs, dataset, cfg["gnd"], settings.device)}
        for line in format_results(dataset, entry["plain"]):
            printer(line)
        if lw is not None:
            entry["whiten"] = _search(whitenapply(vecs, *lw), whitenapply(qvecs, *lw), dataset, cfg["gnd"], settings.device)
            for line in format_results(dataset + " + whiten", entry["whiten"]):
                printer(line)
        results[dataset] = entry
        printer(f">> {dataset}: elapsed time: {htime(time.time() - start)}")
    return results
