"""test.py --qe/--dba/--superglobal end to end: whitening, then DBA of the teacher's database,
the first search, αQE of the student's queries with the teacher's descriptors, the search again,
SuperGlobal's re-ranking of its first results; every entry equal to the same steps computed in
memory from the package's functions."""

import json

import numpy as np
import pytest
import torch

from aml.cli import test as test_cli
from aml.data.testsets import configdataset, query_and_database_paths
from aml.descriptors import ExtractionConfig, describe_images
from aml.evaluation import (SuperGlobal, alpha_query_expansion, database_augmentation, evaluate_ranks, rank_database,
                            superglobal_rerank, whitenapply)
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_network, save_checkpoint
from aml.training.batchnorm import calibrate_batchnorm

# Starts networks for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-d", "synth-oxford", "-imsize", "64", "-j", "0", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A student and a teacher (random resnet18s with calibrated BatchNorm); the teacher carries a
    random whitening for synth-sfm in its meta."""
    folder = tmp_path_factory.mktemp("nets")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        net = build_network("resnet18", pretrained=False)
        calibrate_batchnorm(net, [torch.rand(8, 3, 64, 64)])
        state = checkpoint_state(net, 0, 0.0)
        if seed == 1:
            rng = np.random.default_rng(0)
            whitening = {"m": rng.standard_normal((512, 1)) * 0.01,
                         "P": np.eye(512) + 0.3 * rng.standard_normal((512, 512))}
            state["meta"]["Lw"] = {"synth-sfm": {"ss": whitening, "ms": whitening}}
        paths.append(save_checkpoint(state, folder / f"net{seed}.pth.tar"))
    return paths


def in_memory(root, student, teacher):
    cfg = configdataset("synth-oxford", root / "test")
    images, queries, bbxs = query_and_database_paths(cfg)
    config = ExtractionConfig(workers=0)
    return (describe_images(teacher, images, 64, config=config), describe_images(student, queries, 64, bbxs=bbxs,
                                                                                   config=config), cfg)


def test_asymmetric_reranking_runs_in_order_and_equals_the_steps_in_memory(nets, synth_root, tmp_path, capsys):
    student, teacher = nets
    out = tmp_path / "results.json"
    results = test_cli.main(["-npath", str(student), "--asym", "--teacher", str(teacher), "-w", "synth-sfm",
                             "--qe", "3", "--dba", "4", "--dba-alpha", "1", "--results", str(out),
                             "--data-root", str(synth_root)] + COMMON)["synth-oxford"]
    reranked = ["dba4(α=1)", "dba4(α=1) + αqe3"]
    assert [key for key in results if key not in ("skipped", "report")] == (
        ["plain"] + [f"plain + {r}" for r in reranked] + ["whiten"] + [f"whiten + {r}" for r in reranked])
    printed = capsys.readouterr().out
    for line in (">> synth-oxford: mAP", ">> synth-oxford + dba4(α=1): mAP",
                 ">> synth-oxford + dba4(α=1) + αqe3: mAP", ">> synth-oxford + whiten: mAP", ">> synth-oxford + whiten + dba4(α=1) + αqe3: mP@k[1, 5, 10]"):
        assert line in printed
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["results"]["synth-oxford"]["whiten + dba4(α=1) + αqe3"]["medium"]["map"] == pytest.approx(
        results["whiten + dba4(α=1) + αqe3"]["medium"]["map"])
    assert written["settings"]["qe"] == 3 and written["settings"]["dba"] == 4

    teacher_net = load_network(teacher)
    database, queries, cfg = in_memory(synth_root, load_network(student), teacher_net)
    whitening = teacher_net.meta["Lw"]["synth-sfm"]["ss"]  # the teacher's, on both sides
    for base, (db, q) in {"plain": (database, queries),
                          "whiten": (whitenapply(database, whitening["m"], whitening["P"]),
                                     whitenapply(queries, whitening["m"], whitening["P"]))}.items():
        augmented = database_augmentation(db, 4, alpha=1)
        first = rank_database(augmented, q)
        expanded = alpha_query_expansion(q, augmented, first, 3, alpha=3)  # the student's queries, the teacher's side
        for key, ranks in [(base, rank_database(db, q)), (f"{base} + {reranked[0]}", first),
                           (f"{base} + {reranked[1]}", rank_database(augmented, expanded))]:
            expected = evaluate_ranks(ranks, cfg["gnd"], cfg["protocol"])
            for level in ("easy", "medium", "hard"):
                assert results[key][level]["map"] == expected[level]["map"], key  # exactly
                assert results[key][level]["mp@k"] == expected[level]["mp@k"], key
    assert results["plain + dba4(α=1) + αqe3"]["medium"]["map"] != results["plain"]["medium"]["map"]


def test_symmetric_query_expansion_alone_and_average_qe(nets, synth_root):
    student = nets[0]
    results = test_cli.main(["-npath", str(student), "--qe", "2", "--qe-alpha", "0", "--data-root", str(synth_root)]
                            + COMMON)["synth-oxford"]
    assert [key for key in results] == ["plain", "plain + αqe2(α=0)"]
    net = load_network(student)
    database, queries, cfg = in_memory(synth_root, net, net)
    ranks = rank_database(database, queries)
    average = database[:, ranks[:2]].sum(axis=1) + queries  # q + both neighbours, weight 1 each
    average /= np.linalg.norm(average, axis=0)
    expected = evaluate_ranks(rank_database(database, average), cfg["gnd"], cfg["protocol"])
    assert results["plain + αqe2(α=0)"]["medium"]["map"] == pytest.approx(expected["medium"]["map"], abs=1e-12)


def numbers(entry):
    return {level: (entry[level]["map"], entry[level]["mp@k"]) for level in ("easy", "medium", "hard")}


def test_superglobal_reranks_the_expanded_search_last_and_leaves_the_other_entries_as_they_were(nets, synth_root):
    student, teacher = nets
    run = ["-npath", str(student), "--asym", "--teacher", str(teacher), "-w", "synth-sfm", "--qe", "3",
           "--data-root", str(synth_root)] + COMMON
    without = test_cli.main(run)["synth-oxford"]
    results = test_cli.main(run + ["--superglobal", "40", "--sg-k", "3"])["synth-oxford"]
    sg = "αqe3 + sg40(k=3)"
    assert list(results) == ["plain", "plain + αqe3", f"plain + {sg}", "whiten", "whiten + αqe3", f"whiten + {sg}"]
    assert {key: numbers(results[key]) for key in without} == {key: numbers(entry) for key, entry in without.items()}

    teacher_net = load_network(teacher)
    database, queries, cfg = in_memory(synth_root, load_network(student), teacher_net)
    whitening = teacher_net.meta["Lw"]["synth-sfm"]["ss"]
    for base, (db, q) in {"plain": (database, queries),
                          "whiten": (whitenapply(database, whitening["m"], whitening["P"]),
                                     whitenapply(queries, whitening["m"], whitening["P"]))}.items():
        expanded = alpha_query_expansion(q, db, rank_database(db, q), 3)
        reranked = superglobal_rerank(db.astype(np.float32), expanded, rank_database(db, expanded), SuperGlobal(40, 3))
        expected = evaluate_ranks(reranked, cfg["gnd"], cfg["protocol"])
        assert numbers(results[f"{base} + {sg}"]) == numbers(expected)  # exactly
        assert results[f"{base} + {sg}"]["medium"]["map"] != results[f"{base} + αqe3"]["medium"]["map"]
