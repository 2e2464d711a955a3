"""`rlhf-console report` on a real recorded run directory."""
import shutil
import subprocess
import sys
from pathlib import Path

from engine.report import summarise, write_report
from engine.runtime.rundir import read_jsonl

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
