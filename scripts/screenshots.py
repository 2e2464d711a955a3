#!/usr/bin/env python3
"""Screenshots of every console screen: SVG from Textual, PNG through rsvg-convert.

    python scripts/screenshots.py [--run RUN_DIR] [--out screenshots/]

By default the screens show a copy of the recorded tiny run (tests/fixtures/recorded_run/);
``--run`` shows another run directory instead (e.g. a run of the embedded default).
``--hacked-run RUN_DIR`` adds the reward-hacking warning and the suspicious filter on a run whose
monitors tripped (the one tests/test_reward_hacking.py makes, see the README); ``--only NAME,...``
writes only those screenshots. PNGs need
``rsvg-convert`` (Debian: librsvg2-bin) and the Fira Code font (fonts-firacode); without them only
the SVGs are written.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console import demo  # noqa: E402
from console.app import ConsoleApp  # noqa: E402
from engine.standin import StandInRun  # noqa: E402

# ---- SVG fix-ups for rsvg (the terminal shows these right; rsvg needs help) -----------------------
_LEAD = re.compile(r'(<text\b[^>]*?\bx=")([\d.]+)("[^>]*?\btextLength=")([\d.]+)("[^>]*>)((?:&#160;)+)([^<]*)(</text>)')
_BRAILLE = re.compile(r'<text\b([^>]*?)\bx="([\d.]+)"([^>]*?)\btextLength="([\d.]+)"([^>]*)>([^<]*[\u2800-\u28ff][^<]*)</text>')


def _chars(s: str) -> list[str]:
    return re.findall(r"&#?\w+;|.", s)


def fix_svg(svg: str) -> str:
    """rsvg drops a <text>'s leading spaces and lays braille out in a wider fallback font: move the
    spaces into x, and give each braille cell its own position."""
    def lead(m):
        x, length, n_lead, rest = float(m.group(2)), float(m.group(4)), m.group(6).count("&#160;"), m.group(7)
        if not rest:
            return ""
        cw = length / (n_lead + len(_chars(rest)))
        return f"{m.group(1)}{x + n_lead * cw:.1f}{m.group(3)}{length - n_lead * cw:.1f}{m.group(5)}{rest}{m.group(8)}"

    def braille(m):
        pre, x, mid, length, post, body = m.group(1), float(m.group(2)), m.group(3), float(m.group(4)), m.group(5), m.group(6)
        cs = _chars(body)
        cw = length / len(cs)
        return "".join(f'<text{pre}x="{x + i * cw:.1f}"{mid}textLength="{cw:.1f}"{post}>{c}</text>'
                       for i, c in enumerate(cs) if c != "&#160;")

    return _BRAILLE.sub(braille, _LEAD.sub(lead, svg))


# ---- scenes ---------------------------------------------------------------------------------------
async def shoot(app: ConsoleApp, size: tuple[int, int], keys: list[str], out: Path, title: str) -> Path:
    async with app.run_test(size=size) as pilot:
        await demo.settle(pilot)
        for k in keys:
            if callable(k):  # a step that is not a key (e.g. open a screen on given data)
                await k(pilot)
            else:
                await pilot.press(k)
            await demo.settle(pilot)
        svg = app.export_screenshot(title=title)
    path = out.with_suffix(".svg")
    path.write_text(svg)
    return path


async def _open_token_sample(pilot) -> None:
    """The sample view of tests/fixtures/token_samples.jsonl's fourth sample (step 2 of a real
    run of configs/default.yaml, written with its tokens)."""
    from console.screens.sample import SampleScreen

    lines = (ROOT / "tests" / "fixtures" / "token_samples.jsonl").read_text().splitlines()
    pilot.app.push_screen(SampleScreen(json.loads(lines[3])))


def _set_state(run_dir: Path, state: str, live: bool) -> None:
    rd = StandInRun(run_dir)
    rd.write_state(state=state, updated=rd.read_info().updated,
                   **({"supervisor_pid": os.getpid()} if live else {}))


async def main_async(args) -> list[Path]:
    out = Path(args.out).resolve()    # both resolved before the chdir below
    out.mkdir(parents=True, exist_ok=True)
    src_run = Path(args.run).resolve() if args.run else None
    if src_run is not None and not (src_run / "run.json").exists():
        raise SystemExit(f"--run {args.run}: no run.json in {src_run}")
    tmp = Path(tempfile.mkdtemp(prefix="rlhfc-shots-"))
    os.chdir(tmp)                      # relative paths on screen, the same on every machine
    os.environ["TZ"] = "UTC"
    time.tzset()
    runs = Path("runs")
    if args.run:
        src = src_run
        run = runs / src.name
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("checkpoints", "control.sock", "tensorboard"))
        real = json.loads((run / "run.json").read_text()).get("state")
        if real not in ("finished", "stopped", "failed"):  # a live run is shown as a paused one
            _set_state(run, "paused", live=True)
    else:
        run = demo.copy_recorded_run(runs, "paused", live=True)
        demo.copy_recorded_run(runs, "finished", name="tiny-20261124-181502", created_delta=-30000)
        demo.copy_recorded_run(runs, "failed", name="tiny-20261124-203311", created_delta=-20000,
                               failure="actor: CUDA out of memory (tried to allocate 2.00 GiB)")
    presets = demo.make_presets(Path("configs"))
    default = ROOT / "configs" / "default.yaml"
    if default.exists():
        (presets / "default.yaml").write_text(default.read_text())
    clock = demo.frozen_clock(run)
    common = dict(runs_dir=runs, presets_dir=presets, clock=clock, gpu_probe=demo.no_nvml, blink=False)
    bad = presets / "tiny.yaml"
    text = bad.read_text().replace("batch_size: 4", "batch_size: -4", 1).replace("  epochs: 1", "  epochz: 1", 1)
    Path("my-tiny.yaml").write_text(text)

    shots = [
        ("home", ConsoleApp("home", **common), (120, 36), []),
        ("editor-error", ConsoleApp("edit", config=Path("my-tiny.yaml"), **common), (120, 36), ["escape", "enter"]),
        ("dashboard", ConsoleApp("attach", run=run, **common), (120, 40), []),
        ("dashboard-200x60", ConsoleApp("attach", run=run, **common), (200, 60), []),
        ("sample-detail", ConsoleApp("attach", run=run, **common), (120, 40), ["h", "enter"]),
        ("help", ConsoleApp("attach", run=run, **common), (120, 40), ["question_mark"]),
        ("dashboard-80x24", ConsoleApp("attach", run=run, **common), (80, 24), []),
        ("compare", ConsoleApp("home", **common), (120, 40), ["down", "space", "down", "space", "o"]),
        # a response token by token, the KL layer (a sample of a real default run, with its tokens)
        ("sample-tokens", ConsoleApp("attach", run=run, **common), (120, 34),
         [_open_token_sample] + ["right"] * 5 + ["l", "l"]),
        # two responses to one prompt (a run with a pair: rollout.n > 1, or `n` on this screen)
        ("pairwise", ConsoleApp("attach", run=run, **common), (120, 32), ["a"]),
    ]
    if args.hacked_run:
        src = Path(args.hacked_run_abs)
        hacked = runs / src.name
        shutil.copytree(src, hacked, ignore=shutil.ignore_patterns("checkpoints", "control.sock", "tensorboard"))
        hclock = demo.frozen_clock(hacked)
        hcommon = dict(common, clock=hclock)
        shots += [
            ("reward-hacking", ConsoleApp("attach", run=hacked, **hcommon), (120, 40), ["exclamation_mark"]),
            ("reward-hacking-sample", ConsoleApp("attach", run=hacked, **hcommon), (120, 40),
             ["exclamation_mark", "end", "enter"]),
        ]
    if args.only:
        shots = [s for s in shots if s[0] in args.only.split(",")]
    written = []
    for name, app, size, keys in shots:
        svg = await shoot(app, size, keys, out / name, f"rlhf-console — {name}")
        written.append(svg)
        print(f"{svg}  {size[0]}x{size[1]}")
    shutil.rmtree(tmp, ignore_errors=True)
    return written


def to_png(svgs: list[Path]) -> None:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin fonts-firacode): SVGs only", file=sys.stderr)
        return
    for svg in svgs:
        fixed = svg.with_suffix(".rsvg.svg")
        fixed.write_text(fix_svg(svg.read_text()))
        png = svg.with_suffix(".png")
        subprocess.run([exe, "--zoom", "1", str(fixed), "-o", str(png)], check=True)
        fixed.unlink()
        print(png)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run directory to show instead of the recorded tiny run")
    ap.add_argument("--out", default=str(ROOT / "screenshots"))
    ap.add_argument("--hacked-run", help="a run directory whose reward-hacking monitors tripped")
    ap.add_argument("--only", help="comma-separated screenshot names to write (default: all)")
    args = ap.parse_args()
    args.hacked_run_abs = str(Path(args.hacked_run).resolve()) if args.hacked_run else None
    args.out = str(Path(args.out).resolve())
    svgs = asyncio.run(main_async(args))
    to_png(svgs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
