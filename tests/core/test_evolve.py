"""Unit tests of the CycleQD ask/tell loop (cycleqd.core.evolve) with the elite store, on tiny dense vectors."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.crossover import MergeCrossover
from cycleqd.core.elite import EliteRecord
from cycleqd.core.evolve import CycleQD
from cycleqd.core.mutation import SVDMutation, expert_svds
from cycleqd.core.operators import DenseOperators
from cycleqd.core.taskvector import TaskVector
from cycleqd.run.store import EliteStore
from cycleqd.tasks.base import Measure

TASKS = ["a", "b", "c"]
SHAPE = (6, 5)
EXPERT_SCORES = {
    "a": {"a": 0.80, "b": 0.10, "c": 0.20},
    "b": {"a": 0.15, "b": 0.75, "c": 0.30},
    "c": {"a": 0.25, "b": 0.20, "c": 0.85},
}
# fixed directions of the fake evaluator, one per task
DIRECTIONS = {t: torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + k)) for k, t in enumerate(TASKS)}


def _experts() -> dict[str, TaskVector]:
    return {
        t: TaskVector({"w": torch.randn(SHAPE, generator=torch.Generator().manual_seed(k))})
        for k, t in enumerate(TASKS)
    }


def fake_evaluate(tv: TaskVector) -> dict[str, float]:
    """Deterministic scores in [0, 1] from the child's weights."""
    w = tv["w"].dense() if hasattr(tv["w"], "dense") else tv["w"]
    return {t: float(np.clip(0.5 + 0.05 * float((w * DIRECTIONS[t]).sum()), 0.0, 1.0)) for t in TASKS}


def _make(root, seed: int = 0, children: int = 1, sigma: float = 0.1) -> CycleQD:
    arch = CyclicArchives(tasks=TASKS, measures={t: Measure(low=0, high=1, bins=10) for t in TASKS}, seed=seed)
    experts = _experts()
    operators = DenseOperators(
        MergeCrossover(sigma=sigma),
        SVDMutation(scale=0.3),
        {t: expert_svds(experts[t]) for t in TASKS},
        EliteStore(root),
    )
    return CycleQD(archives=arch, operators=operators, children_per_generation=children, seed=seed)


def _seeded(root, **kw) -> CycleQD:
    qd = _make(root, **kw)
    ids = qd.seed(_experts(), EXPERT_SCORES)
    assert ids == {"a": 0, "b": 1, "c": 2}
    return qd


def _elite_ids(archive) -> set[int]:
    return {int(s[0]) for s in archive.data("solution")}


def _run(qd: CycleQD, generations: int) -> list:
    out = []
    for _ in range(generations):
        cands = qd.ask()
        qd.tell(cands, [fake_evaluate(c.vector) for c in cands])
        out.append(cands)
    return out


# -- seeding ---------------------------------------------------------------------------


def test_seed_stores_experts_and_offers_them(tmp_path):
    qd = _seeded(tmp_path)
    assert qd.evaluations == 3
    assert qd.operators.store.ids() == {0, 1, 2}
    for k, t in enumerate(TASKS):
        rec = qd.operators.store.record(k)
        assert rec["origin"] == f"expert:{t}" and rec["generation"] == -1 and rec["parents"] == []
        assert rec["scores"] == EXPERT_SCORES[t]
        assert torch.equal(qd.operators.store.get(k)["w"], _experts()[t]["w"])
    for t in TASKS:
        assert _elite_ids(qd.archives.archives[t]) == {0, 1, 2}


# -- the loop --------------------------------------------------------------------------


def test_loop_cycles_quality_and_uses_archive_elites(tmp_path):
    qd = _seeded(tmp_path, sigma=0.2)
    xo, mut = qd.operators.crossover, qd.operators.mutation
    children_as_parents, evicted = 0, set()
    for g in range(9):
        q = TASKS[g % 3]
        elites_before = _elite_ids(qd.archives.archives[q])
        gen_state = qd.gen.get_state()
        parent_vectors = {i: qd.operators.store.get(i) for i in elites_before}

        (cand,) = qd.ask()
        assert cand.generation == g
        assert cand.quality_task == q
        assert cand.id == 3 + g
        assert len(cand.parents) == 2 and len(set(cand.parents)) == 2
        assert set(cand.parents) <= elites_before
        children_as_parents += sum(i >= 3 for i in cand.parents)

        # oracle: the child is mutation(crossover(parents)) with the loop's generator stream
        oracle_gen = torch.Generator()
        oracle_gen.set_state(gen_state)
        expected = mut(xo([parent_vectors[i] for i in cand.parents], oracle_gen), qd.operators.svds[q], oracle_gen)
        assert torch.equal(cand.vector["w"], expected["w"])

        scores = fake_evaluate(cand.vector)
        qd.tell([cand], [scores])
        alive = qd.archives.alive_ids()
        evicted |= set(range(qd.next_id)) - alive
        assert qd.operators.store.ids() >= alive  # every elite is on disk; the dead wait for a checkpoint
        if cand.id not in alive:
            assert not qd.operators.store.path(cand.id).exists()  # a child no archive keeps is never written
        qd.operators.store.collect(alive)  # what the runner does once a checkpoint is committed
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == sorted([f"elite-{i:06d}.safetensors" for i in alive] + [f"elite-{i:06d}.json" for i in alive])
        if cand.id in alive:
            rec = qd.operators.store.record(cand.id)
            assert rec["parents"] == list(cand.parents)
            assert rec["origin"] == f"child:{q}"
            assert rec["scores"] == pytest.approx(scores)
            assert torch.equal(qd.operators.store.get(cand.id)["w"], cand.vector["w"])
    # the run exercised both paths: children bred further, and replaced elites left the store
    assert children_as_parents > 0
    assert evicted and not any(qd.operators.store.path(i).exists() for i in evicted)
    assert qd.generation == 9
    assert qd.evaluations == 3 + 9
    assert qd.next_id == 3 + 9


def test_ask_twice_and_tell_misuse(tmp_path):
    qd = _seeded(tmp_path, children=2)
    with pytest.raises(RuntimeError, match="without ask"):
        qd.tell([], [])
    cands = qd.ask()
    assert len(cands) == 2 and cands[0].id != cands[1].id
    assert all(c.quality_task == "a" for c in cands)
    with pytest.raises(RuntimeError, match="twice"):
        qd.ask()
    with pytest.raises(RuntimeError, match="checkpoint"):
        qd.state_dict()
    scores = [fake_evaluate(c.vector) for c in cands]
    with pytest.raises(ValueError, match="same order"):
        qd.tell(list(reversed(cands)), list(reversed(scores)))
    with pytest.raises(ValueError, match="same order"):
        qd.tell(cands[:1], scores[:1])
    with pytest.raises(ValueError, match="2 candidates but 1 score"):
        qd.tell(cands, scores[:1])
    with pytest.raises(ValueError, match=r"no score for tasks \['c'\]"):
        qd.tell(cands, [scores[0], {"a": 0.5, "b": 0.5}])
    # after the failed tells, the right one still works
    qd.tell(cands, scores)
    assert qd.generation == 1 and qd.evaluations == 5
    assert qd.ask()[0].quality_task == "b"


def test_children_per_generation_validation(tmp_path):
    with pytest.raises(ValueError, match="children_per_generation"):
        _make(tmp_path, children=0)


def test_same_seed_same_children(tmp_path):
    a = _run(_seeded(tmp_path / "a", seed=3), 9)
    b = _run(_seeded(tmp_path / "b", seed=3), 9)
    c = _run(_seeded(tmp_path / "c", seed=4), 9)
    for ca, cb in zip(a, b):
        assert [x.parents for x in ca] == [x.parents for x in cb]
        assert torch.equal(ca[0].vector["w"], cb[0].vector["w"])
    assert any(not torch.equal(ca[0].vector["w"], cc[0].vector["w"]) for ca, cc in zip(a, c))


def test_state_dict_round_trip_resumes_identically(tmp_path):
    qd = _seeded(tmp_path / "run", seed=7)
    _run(qd, 4)
    state = pickle.dumps(qd.state_dict())
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")  # the store as it was at the checkpoint
    rest = _run(qd, 5)

    fresh = _make(tmp_path / "resumed", seed=999)  # different seed: everything must come from the state
    fresh.load_state_dict(pickle.loads(state))
    assert fresh.generation == 4 and fresh.next_id == 3 + 4 and fresh.evaluations == 3 + 4
    resumed = _run(fresh, 5)
    for x, y in zip(rest, resumed):
        assert x[0].id == y[0].id
        assert x[0].quality_task == y[0].quality_task
        assert x[0].parents == y[0].parents
        assert torch.equal(x[0].vector["w"], y[0].vector["w"])
    assert fresh.archives.alive_ids() == qd.archives.alive_ids()
    assert fresh.operators.store.ids() == qd.operators.store.ids()


# -- the store ---------------------------------------------------------------------------


def test_elite_store_put_get_collect(tmp_path):
    store = EliteStore(tmp_path / "s")
    tv = TaskVector({"w": torch.arange(6.0).reshape(2, 3)})
    store.put(tv, EliteRecord(id=12, generation=3, origin="child:a", parents=(1, 2), scores={"a": 0.5}))
    assert store.path(12).name == "elite-000012.safetensors"
    assert store.ids() == {12}
    assert torch.equal(store.get(12)["w"], tv["w"])
    assert store.record(12) == {"id": 12, "generation": 3, "origin": "child:a", "parents": [1, 2], "scores": {"a": 0.5}}
    store.put(tv, EliteRecord(id=13, generation=3, origin="child:a", parents=(), scores={}))
    store.collect([13])
    assert store.ids() == {13}
    assert not store.path(12).with_suffix(".json").exists()
    with pytest.raises(KeyError, match="elite 12"):
        store.get(12)


class _Evaluator:
    """The fake evaluator behind the Evaluator protocol: in order, ``num_workers`` at a time."""

    def __init__(self, num_workers: int = 1) -> None:
        self.num_workers, self.queue, self.batches = num_workers, [], []

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def map(self, items):
        self.batches.append(len(items))
        return [fake_evaluate(x) for x, _ in items]

    def submit(self, key, x, split):
        self.queue.append((key, fake_evaluate(x)))

    def next_result(self):
        return self.queue.pop(0)


def test_run_makes_the_children_of_ask_and_tell_and_reports_each_generation(tmp_path):
    by_hand = _seeded(tmp_path / "a", seed=3, children=2)
    expected = _run(by_hand, 5)
    qd, evaluator, seen, before = _seeded(tmp_path / "b", seed=3, children=2), _Evaluator(), [], []
    qd.run(evaluator, 5, after=lambda c, r, s: seen.append((c, r, s)), before=before.append)
    assert before == [0, 1, 2, 3, 4] and evaluator.batches == [2] * 5 and qd.generation == 5
    for (cands, results, seconds), want in zip(seen, expected):
        assert [c.id for c in cands] == [c.id for c in want] and seconds >= 0
        assert all(torch.equal(c.vector["w"], w.vector["w"]) for c, w in zip(cands, want))
        assert results == [fake_evaluate(c.vector) for c in cands]
    assert qd.archives.rows() == by_hand.archives.rows()


def test_steady_run_keeps_every_worker_busy_and_asks_none_after_a_stop(tmp_path):
    by_hand = _seeded(tmp_path / "a", seed=4)
    asked = []
    for _ in range(6):  # one worker: ask one, tell it, in turn
        c = by_hand.ask_one()
        by_hand.tell_one(c, fake_evaluate(c.vector))
        asked.append(c.id)
    qd, told = _seeded(tmp_path / "b", seed=4), []
    qd.run(_Evaluator(1), 6, after=lambda c, r, s: told.append(c[0].id), steady=True)
    assert told == asked and qd.archives.rows() == by_hand.archives.rows()

    # three workers: three children in flight from the start; once stop() is true none is asked,
    # and those in flight are told (the runner then commits and stops)
    qd, evaluator, depth = _seeded(tmp_path / "c", seed=4), _Evaluator(3), []

    def after(candidates, results, seconds):
        depth.append(evaluator.in_flight)
        if not evaluator.in_flight:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qd.run(evaluator, 10, after=after, steady=True, stop=lambda: len(depth) >= 2)
    assert depth == [2, 2, 1, 0] and qd.generation == 4 and not qd.pending
