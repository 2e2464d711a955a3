"""The metrics catalogue (engine/records.py METRICS) is the one list of metric names: every key
a real run writes to metrics.jsonl is in it, and every name the dashboard's curves, the compare
screen and the report read from a row is in it."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from engine.records import CATALOGUE, METRICS, PLOT_GROUPS, metric, plot_group
from tests.conftest import ROOT, TINY


def test_a_tiny_run_writes_only_catalogued_metrics(tmp_path, cleanup_runs):
    """One 2-step tiny run that writes nearly every conditional metric: a critic (gae), groups
    (rollout.n 2), a rule reward (accuracy), held-out evaluation, the KL in the loss with a KL
    guard, and an audit scorer."""
    from engine.client import launch

    run = launch(TINY,
                 [f"run.output_dir={tmp_path}", "run.steps=2", "checkpoint.every=0", "data.source=bundled:arithmetic",
                  "reward.source=rule:arithmetic", "rollout.n=2", "eval.every=2", "eval.num_prompts=4",
                  "ppo.kl_in=loss", "ppo.kl_guard=2.0", "reward.audit=lexicon:vader"])
    cleanup_runs.append(run)
    assert run.wait(timeout=600) == "finished", run.info.get("failure")
    (metrics,) = tmp_path.glob("*/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    assert len(rows) == 2
    written = set().union(*rows)
    assert written - set(CATALOGUE) == set(), "written to metrics.jsonl but not in engine/records.py METRICS"
    # the run did write the conditional ones (else this test would check less than it says)
    assert {"value_loss", "group_score_std", "accuracy", "heldout_accuracy", "heldout_accuracy_initial",
            "kl_loss", "kl_guard_skipped", "audit_mean", "divergence", "reward_version"} <= written


def test_the_dashboard_plots_are_the_catalogues_plot_groups():
    from console.widgets.curves import GROUP_COLOURS, PLOTS

    assert [title for title, _ in PLOTS] == list(PLOT_GROUPS)
    for title, series in PLOTS:
        assert [(k, legend) for k, legend, _ in series] == [(m.name, m.legend) for m in plot_group(title)]
    assert set(GROUP_COLOURS) <= set(PLOT_GROUPS), "colours for a plot group the catalogue lacks"


def test_compare_and_report_read_catalogued_metrics():
    from console.screens.compare import OVERLAY
    from engine.report import SERIES

    for title, key in OVERLAY:
        assert title == metric(key).title
    assert [k for k, _ in SERIES] and all(k in CATALOGUE for k, _ in SERIES)


def _row_names_read(path: Path) -> set[str]:
    """String literals a module reads from a metrics row: ``m.get("x")``, ``m["x"]``,
    ``.series("x")``, ``metric("x")`` and the ``key=`` defaults of its functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(f.value, ast.Name) and f.value.id == "m":
                names.add(node.args[0].value)
            elif isinstance(f, ast.Attribute) and f.attr == "series":
                names.add(node.args[0].value)
            elif isinstance(f, ast.Name) and f.id == "metric":
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "m" \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            names.add(node.slice.value)
        elif isinstance(node, ast.FunctionDef):
            a = node.args
            for arg, default in zip(a.args[len(a.args) - len(a.defaults):], a.defaults):
                if arg.arg == "key" and isinstance(default, ast.Constant) and isinstance(default.value, str):
                    names.add(default.value)
    return names


@pytest.mark.parametrize("module", ["engine/report.py", "console/widgets/curves.py", "console/screens/compare.py"])
def test_every_metric_name_a_reader_spells_is_catalogued(module):
    names = _row_names_read(ROOT / module)
    if module == "engine/report.py":   # the scan finds what the report reads (it would find a typo too)
        assert {"score_mean", "kl", "kl_coef", "heldout_n", "reward_version"} <= names
    assert names - set(CATALOGUE) == set(), f"{module} reads metrics the catalogue does not name"


def test_catalogue_entries_are_unique_and_complete():
    assert len(CATALOGUE) == len(METRICS), "a metric named twice"
    for m in METRICS:
        assert m.description.endswith("."), m.name
        assert bool(m.group) == bool(m.legend), f"{m.name}: a plotted metric needs a legend, and only it"
    with pytest.raises(KeyError, match="engine/records.py"):
        metric("no_such_metric")
    assert metric("policy_loss").title == "policy loss" and metric("kl").title == "KL"
