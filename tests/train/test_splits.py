"""Train / validation / test splits and k-fold cross validation: every entry in exactly one part,
the test set scored once (its AUC equals sklearn's on the saved model), and a k-fold ensemble
that never scores an event with the model that trained on it (checked entry by entry against
each fold's own checkpoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from rootml.errors import ConfigError
from rootml.train import run_from_params
from rootml.train.splits import n_folds_of, split_entries

from ._generated import checkpoint_outputs, read, standardised, trained, write_model

BRANCHES = ["x1", "score_hint", "pt"]
BASE = {"tree": "Events", "branches": BRANCHES, "batch_size": 200, "lr": 0.01, "device": "cpu",
        "chunk_size": 500, "debug_entries": True}  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5000)), min_size=1, max_size=5),
    st.floats(0, 0.6),
    st.floats(0, 0.39),
)
def test_parts_are_disjoint_and_cover_every_entry(spans, val, test):
    ranges = [(a, a + n) for a, n in spans]
    parts = split_entries(ranges, val, test)
    for (start, stop), tr, te, va in zip(ranges, parts.train, parts.test, parts.val):
        assert (tr[0], tr[1]) == (start, te[0]) and te[1] == va[0] and va[1] == stop
        assert tr[0] <= tr[1] <= te[1] <= stop  # consecutive, so disjoint and covering
        n = stop - start
        assert va[1] - va[0] == round(n * val)
        assert te[1] - te[0] == min(round(n * test), n - round(n * val))


def test_fractions_that_leave_nothing_to_train_are_refused():
    with pytest.raises(ConfigError, match="leave nothing to train"):
        split_entries([(0, 10)], 0.5, 0.5)
    assert n_folds_of("event % 5", None) == 5 and n_folds_of("(run * 7 + event) % 4", None) == 4
    with pytest.raises(ConfigError, match="give n_folds"):
        n_folds_of("event", None)


def test_test_set_is_held_out_and_scored_once(generated, tmp_path):
    files = [str(generated["a"]), str(generated["b"])]
    params = {**BASE, "epochs": 2, "val_fraction": 0.2, "test_fraction": 0.3}
    run = tmp_path / "run"
    summary = run_from_params(files, [1, 0], write_model(tmp_path), params, run)
    # 2000 entries per file: validation the last 400, test the 600 before, training the first 1000.
    for epoch in (1, 2):
        file_index, entry = trained(run, epoch)
        keys = np.sort(file_index * 10**6 + entry)
        np.testing.assert_array_equal(
            keys, np.sort(np.r_[np.arange(1000), 10**6 + np.arange(1000)])
        )
    assert (summary["train_entries"], summary["val_entries"], summary["test_entries"]) == (
        2000,
        800,
        1200,
    )
    history = json.loads((run / "history.json").read_text())
    assert all(row["val_events"] == 800 for row in history)
    # The test AUC is the saved model's on entries 1000-1600 of each file, computed apart.
    scores, labels = [], []
    for path, label in zip(files, (1, 0)):
        columns = {k: v[1000:1600] for k, v in read(path, BRANCHES).items()}
        scores.append(
            checkpoint_outputs(run, run / "checkpoint.pt", standardised(run, columns))[:, 0]
        )
        labels.append(np.full(600, label))
    expected = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    assert summary["test"]["test_events"] == 1200 and summary["test"]["epoch"] == 2
    assert summary["test"]["test_auc"] == pytest.approx(expected, abs=2e-4)
    assert json.loads((run / "summary.json").read_text())["test"] == summary["test"]
    for name in ("roc.png", "scores.png", "roc.json"):
        assert (run / "plots" / "test" / name).is_file()


def test_k_fold_application_never_scores_an_event_with_its_own_model(generated, tmp_path):
    from rootml.export.run import export_run
    from rootml.predict import predict

    files = [str(generated["a"]), str(generated["b"])]
    params = {**BASE, "epochs": 1, "val_fraction": 0.2, "folds": "event % 3"}
    out = tmp_path / "kfold"
    summary = run_from_params(files, [1, 0], write_model(tmp_path), params, out)
    events = [read(f, ["event"])["event"] for f in files]
    assert json.loads((out / "folds.json").read_text())["n_folds"] == 3
    for k in range(3):
        file_index, entry = trained(out / f"fold_{k}")
        seen = np.concatenate([events[f][entry[file_index == f]] for f in (0, 1)])
        # Trained on exactly the other folds' events among the first 1600 entries of each file.
        expected = np.concatenate([e[:1600][e[:1600] % 3 != k] for e in events])
        np.testing.assert_array_equal(np.sort(seen), np.sort(expected))
        fold_summary = json.loads((out / f"fold_{k}" / "summary.json").read_text())
        assert fold_summary["test"]["test_events"] == sum(int((e % 3 == k).sum()) for e in events)
    assert summary["test"]["test_auc"]["folds"] == [
        json.loads((out / f"fold_{k}" / "summary.json").read_text())["test"]["test_auc"]
        for k in range(3)
    ]

    assert export_run(out, tmp_path / "repo", "kfold") == 1
    metadata = json.loads((tmp_path / "repo" / "kfold" / "1" / "rootml.json").read_text())
    assert metadata["folds"]["input"] == "fold" and metadata["folds"]["n_folds"] == 3
    result = predict(str(tmp_path / "repo" / "kfold"), files, str(tmp_path / "scores.parquet"))
    assert result["entries"] == 4000
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    scores = np.asarray(table["score"])
    for path in files:
        columns = read(path, [*BRANCHES, "event"])
        x = standardised(out / "fold_0", columns)
        each = np.stack([checkpoint_outputs(out / f"fold_{k}", out / f"fold_{k}" / "checkpoint.pt", x)[:, 0] for k in range(3)])  # fmt: skip
        mine = scores[np.asarray(table["file"]) == path]
        own = columns["event"] % 3
        np.testing.assert_allclose(mine, each[own, np.arange(len(own))], atol=1e-5)
        # The fold models differ, so matching the right one means something.
        other = each[(own + 1) % 3, np.arange(len(own))]
        assert np.mean(np.abs(mine - other) > 1e-4) > 0.9


def test_one_fold_at_a_time(generated, tmp_path):
    files = [str(generated["a"]), str(generated["b"])]
    params = {**BASE, "epochs": 1, "folds": "event % 4", "debug_entries": False}
    summary = run_from_params(
        files, [1, 0], write_model(tmp_path), params, tmp_path / "run", fold=2
    )
    assert summary["fold"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fold_2", "folds.json", "summary.json"]  # fmt: skip
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["folds_done"] == [2]
    with pytest.raises(ConfigError, match="fold must be in 0..3"):
        run_from_params(files, [1, 0], write_model(tmp_path), params, tmp_path / "run", fold=4)
