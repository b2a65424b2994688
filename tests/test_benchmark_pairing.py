"""benchmarks/distillation.py pairs the distilled and seed-only students item by item from the
results store's per-item rows (exact McNemar on the discordant items), not from their means."""

from __future__ import annotations

import importlib.util

from conftest import REPO_ROOT

from distil_platform.evaluation.evaluate import ItemResult, prediction_rows
from distil_platform.storage.store import ResultsStore, predictions


def _bench():
    spec = importlib.util.spec_from_file_location("distillation_benchmark", REPO_ROOT / "benchmarks" / "distillation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(run_id, scores, task="git_assistant"):
    results = [ItemResult(item_id=f"t{i}", repeat=0, prediction="p", reference="r", score=float(s),
                          score_strict=float(s), parse_ok=True, metric="tool_call_equivalence")
               for i, s in enumerate(scores)]
    return prediction_rows(results, task=task, stage="student_eval", model="m", run_id=run_id)


def test_students_are_paired_on_the_same_items(tmp_path):
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    # 12 items: the distilled student wins 10, loses 0, ties 2 (both right on t10, both wrong on t11)
    distilled = [1] * 10 + [1, 0]
    seed_only = [0] * 10 + [1, 0]
    store.insert(predictions, _rows("run-distilled", distilled) + _rows("run-seed", seed_only)
                 + _rows("run-distilled", [0] * 12, task="other_task"))
    res = _bench()._paired(store, "git_assistant", "run-distilled", "run-seed", margin=0.05)
    assert res["n"] == 12
    assert abs(res["diff"] - 10 / 12) < 1e-9
    assert abs(res["mcnemar_p"] - 2 * 0.5 ** 10) < 1e-12  # exact binomial on 10 discordant pairs
    assert res["ci_low"] > 0
    assert res["margin"] == 0.05 and res["verdict"] == "win"
    assert (res["item_wins"], res["item_ties"], res["item_losses"]) == (10, 2, 0)


def _pair_runs():
    spec = importlib.util.spec_from_file_location("pair_runs_benchmark", REPO_ROOT / "benchmarks" / "pair_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluations_from_two_stores_are_paired_on_the_items_both_scored(tmp_path, capsys):
    import json

    import pytest

    new, old = f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{tmp_path / 'old.db'}"
    # a: 8 right of 10; b (another store, another run): 3 right of the same 10 plus an item a lacks.
    a_rows = [dict(r, model="student-300") for r in _rows("run-a", [1] * 8 + [0, 0])]
    b_rows = [dict(r, model="student-150") for r in _rows("run-b", [0] * 6 + [1, 1, 1, 0] + [1])]
    ResultsStore(new).insert(predictions, a_rows)
    ResultsStore(old).insert(predictions, b_rows)
    out = tmp_path / "pair.json"
    pair = _pair_runs()
    assert pair.main(["--task", "git_assistant", "--a", f"{new}@student-300", "--b", f"{old}@run:run-b",
                      "--a-label", "distilled", "--b-label", "seed_only", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["distilled"]["correct"] == 8 and res["seed_only"]["correct"] == 4 and res["seed_only"]["n"] == 11
    paired = res["paired"]
    assert paired["n"] == 10  # the item only b scored is left out
    assert (paired["item_wins"], paired["item_ties"], paired["item_losses"]) == (6, 3, 1)
    assert abs(paired["diff"] - 0.5) < 1e-9
    assert abs(paired["mcnemar_p"] - 2 * (1 + 7) / 2 ** 7) < 1e-12  # exact binomial, 6 vs 1 discordant
    capsys.readouterr()

    # Two runs of one model in a store: the side must name its run.
    ResultsStore(new).insert(predictions, [dict(r, run_id="run-a2") for r in a_rows])
    with pytest.raises(SystemExit, match="2 runs stored"):
        pair.main(["--task", "git_assistant", "--a", f"{new}@student-300", "--b", f"{old}@run:run-b"])
    with pytest.raises(SystemExit, match="no student_eval predictions"):
        pair.main(["--task", "git_assistant", "--a", f"{new}@nobody", "--b", f"{old}@run:run-b"])
