"""Checkpoints are data (format 2: JSON and arrays in one safetensors file): the loops resume
from them to the children an uninterrupted loop makes; format-1 checkpoints (pickles) written
by an earlier cycleqd still resume; another format is refused in one line naming it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cycleqd.core.evolve import Candidate, candidate_data, candidate_of
from cycleqd.errors import DamagedFile
from cycleqd.protocols import Failure, ItemScores, result_data, result_of
from cycleqd.run import checkpoint
from tests.builders import toy_experts
from tests.run.checkpoint_setup import (
    advance_genome_loop,
    advance_search_loop,
    genome_loop,
    genome_scores,
    search_loop,
)

DATA = Path(__file__).parent / "data"


def _install(run_dir: Path, name: str) -> None:
    path = checkpoint.checkpoint_path(run_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes((DATA / name).read_bytes())


def _continue_genome(qd) -> Candidate:
    """Tell the child in flight, then ask the next generation's child."""
    (pending,) = qd.pending.values()
    qd.tell_one(pending, genome_scores(pending.vector))
    return qd.ask()[0]


def test_a_format_1_cycleqd_checkpoint_resumes_to_the_children_its_writer_made_next(tmp_path):
    _install(tmp_path, "checkpoint-v1-cycleqd.ckpt")
    expected = np.load(DATA / "checkpoint-v1-next.npz")
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.generation == 4 and ckpt.state["genome"] is True
    checkpoint.commit(tmp_path / "again", ckpt.state, ckpt.elites)  # upgraded to plain data: format 2 writes it
    opt = {t: result_of(r) for t, r in ckpt.state["experts_opt"].items()}
    assert opt["b"] == Failure("raised", "b", "boom")
    assert isinstance(opt["c"], ItemScores) and opt["c"].per_item["a"] == [0.0, 1.0]

    qd = genome_loop(seed=999)  # another seed: everything must come from the checkpoint
    qd.load_state_dict(checkpoint.load(tmp_path / "again").state["qd"])
    assert qd.failures == {"timeout": 1} and qd.evaluations == 3 + 4
    np.testing.assert_array_equal(next(iter(qd.pending.values())).vector, expected["pending"])
    child = _continue_genome(qd)
    assert child.id == int(expected["child_id"]) and child.parents == tuple(expected["child_parents"])
    np.testing.assert_allclose(child.vector, expected["child"], rtol=1e-6, atol=1e-7)


def test_a_format_1_search_checkpoint_resumes_to_the_candidates_its_writer_drew_next(tmp_path):
    _install(tmp_path, "checkpoint-v1-cmaes.ckpt")
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.search_name == "cmaes" and ckpt.where() == "evaluation 12"
    loop = search_loop(seed=999)
    loop.load_state_dict(ckpt.search)
    assert loop.done == 12 and loop.rounds == 3
    np.testing.assert_allclose(loop.ask(), np.load(DATA / "checkpoint-v1-next.npz")["search"], rtol=1e-12)


def test_format_2_is_json_and_arrays_and_resumes_exactly(tmp_path):
    qd = genome_loop()
    rest = advance_genome_loop(qd)
    rest["experts_opt"] = {t: result_data(r) for t, r in rest["experts_opt"].items()}
    loop = search_loop()
    advance_search_loop(loop)
    checkpoint.commit(tmp_path, {"qd": qd.state_dict(), **rest, "search": loop.state_dict()}, {"e": "ab" * 32})
    data = checkpoint.checkpoint_path(tmp_path).read_bytes()
    head, _, payload = data.partition(b"\n")
    assert head.split(b" ")[:2] == [b"cycleqd-checkpoint", b"2"]
    n = int.from_bytes(payload[:8], "little")
    state = json.loads(json.loads(payload[8 : 8 + n])["__metadata__"]["state"])  # readable without cycleqd
    assert state["state"]["qd"]["generation"] == 4 and state["state"]["search"]["best_value"] > 0
    assert set(state["state"]["qd"]["archives"]["solutions"]) == {"$array"}  # the genomes: a tensor

    ckpt = checkpoint.load(tmp_path)
    fresh, fresh_loop = genome_loop(seed=999), search_loop(seed=999)
    fresh.load_state_dict(ckpt.state["qd"])
    fresh_loop.load_state_dict(ckpt.search)
    a, b = _continue_genome(qd), _continue_genome(fresh)
    assert (a.id, a.parents, a.quality_task) == (b.id, b.parents, b.quality_task)
    np.testing.assert_array_equal(a.vector, b.vector)
    assert fresh.archives.rows() == qd.archives.rows()
    np.testing.assert_array_equal(loop.ask(), fresh_loop.ask())
    assert fresh_loop.best_result == loop.best_result and fresh_loop.best_value == loop.best_value


def test_a_task_vector_in_flight_keeps_its_factors_and_dtypes(tmp_path):
    tv = toy_experts("lora")["a"]
    half = {n: (d.to(torch.bfloat16) if isinstance(d, torch.Tensor) else d) for n, d in tv.items()}
    c = Candidate(7, 3, "b", (1, 2), type(tv)(half))
    checkpoint.commit(tmp_path, {"pending": [candidate_data(c)], "best": float("-inf")}, {})
    state = checkpoint.load(tmp_path).state
    back = candidate_of(state["pending"][0])
    assert state["best"] == float("-inf")
    assert (back.id, back.generation, back.quality_task, back.parents) == (7, 3, "b", (1, 2))
    for n, d in c.vector.items():
        e = back.vector[n]
        assert type(e) is type(d), n
        for x, y in [(d.B, e.B), (d.A, e.A)] if hasattr(d, "B") else [(d, e)]:
            assert x.dtype == y.dtype and torch.equal(x, y), n


def test_another_format_is_refused_in_one_line_naming_it(tmp_path):
    checkpoint.commit(tmp_path, {"qd": {"generation": 1}}, {})
    path = checkpoint.checkpoint_path(tmp_path)
    head, _, payload = path.read_bytes().partition(b"\n")
    path.write_bytes(b"cycleqd-checkpoint 3 %s\n" % hashlib.sha256(payload).hexdigest().encode() + payload)
    with pytest.raises(DamagedFile, match="checkpoint format 3, this cycleqd reads formats 1, 2") as e:
        checkpoint.load(tmp_path)
    assert "\n" not in str(e.value)


def test_state_that_is_not_data_is_refused_naming_where(tmp_path):
    with pytest.raises(TypeError, match=r"state\.qd\.pending\[0\]: a Candidate is not plain data"):
        checkpoint.commit(tmp_path, {"qd": {"pending": [Candidate(1, 0, "a", (), None)]}}, {})
    with pytest.raises(TypeError, match=r"state\.solutions: key 3 is not a string"):
        checkpoint.commit(tmp_path, {"solutions": {3: np.zeros(2)}}, {})
    assert checkpoint.load(tmp_path) is None  # nothing was written
