"""`rlhf-console report` on a real recorded run directory."""
import shutil
import subprocess
import sys
from pathlib import Path

from engine.files import read_jsonl
from engine.report import summarise, write_report

ROOT = Path(__file__).resolve().parent.parent
RECORDED = next(p for p in (ROOT / "tests" / "fixtures" / "recorded_run").iterdir() if (p / "run.json").exists())


def test_report_writes_markdown_and_plots(tmp_path):
    md = write_report(RECORDED, tmp_path)
    text = md.read_text()
    metrics = read_jsonl(RECORDED / "metrics.jsonl")
    s = summarise(metrics)
    assert f"| score (mean) | {s['score_start']:.3f} | {s['score_end']:.3f} |" in text
    assert text.count("\n| ") >= len(metrics)  # a row per step
    assert "## Samples: step 1 and step" in text
    png = tmp_path / f"{RECORDED.name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_cli(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RECORDED, runs / RECORDED.name)
    out = subprocess.run([sys.executable, "-m", "console.cli", "--runs-dir", str(runs), "report", RECORDED.name],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "score" in out.stdout and (runs / RECORDED.name / "report" / f"{RECORDED.name}.md").exists()


def test_summary_finds_when_the_score_rose_by_0_2():
    def row(step, score, kl=1.0):
        return {"step": step, "score_mean": score, "kl": kl, "time": 100.0 + 5 * step, "timings": {"step": 5.0}}

    flat = [row(i, 0.5) for i in range(1, 31)]
    s = summarise(flat)
    assert s["step_plus_0_2"] is None and s["score_second_half"] == 0.5
    rising = [row(i, 0.5 if i <= 10 else 0.8, kl=0.1 * i) for i in range(1, 41)]
    s = summarise(rising)
    # the trailing 10-step mean reaches 0.7 once 7 of its 10 steps are at 0.8: step 17
    assert s["step_plus_0_2"] == 17
    assert s["minute_plus_0_2"] == (rising[16]["time"] - rising[0]["time"] + 5.0) / 60
    assert abs(s["kl_max_window"] - sum(0.1 * i for i in range(31, 41)) / 10) < 1e-9
    assert abs(s["score_second_half"] - 0.8) < 1e-9


def test_frontier_table_matches_metrics(tmp_path):
    from engine.report import frontier

    metrics = read_jsonl(RECORDED / "metrics.jsonl")
    assert len(metrics) == 12
    wins = frontier(metrics, window=5)  # windows of 5, 5 and the last 2 steps
    assert [(w["first"], w["last"], w["steps"]) for w in wins] == [(1, 5, 5), (6, 10, 5), (11, 12, 2)]
    for w, rows in zip(wins, (metrics[0:5], metrics[5:10], metrics[10:12])):
        for key, col in (("score", "score_mean"), ("kl", "kl"), ("kl_coef", "kl_coef")):
            assert abs(w[key] - sum(r[col] for r in rows) / len(rows)) < 1e-12
    # the report's table: one 20-step window over the 12 recorded steps, figures from metrics.jsonl
    text = write_report(RECORDED, tmp_path).read_text()
    score = sum(r["score_mean"] for r in metrics) / 12
    kl = sum(r["kl"] for r in metrics) / 12
    coef = sum(r["kl_coef"] for r in metrics) / 12
    assert "## Score-KL frontier" in text
    assert f"| 1–12 | 12 | {score:.3f} | {kl:.3f} | {coef:.4f} |" in text
    png = tmp_path / f"{RECORDED.name}-frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![score-KL frontier]({png.name})" in text
