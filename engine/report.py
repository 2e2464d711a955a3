"""``rlhf-console report RUN``: a run directory as a markdown report with PNG plots.

The report holds a per-step table (score, KL, KL coefficient, response length, losses, step time),
a summary of the start and the end (means over the first and last ten steps), plots of the same
series, the score-KL frontier (mean score, KL and KL coefficient per 20-step window, as a table
and a plot), and a few samples of the first and the last steps side by side. Everything comes from the
run directory, so any run — live, finished or failed — can be reported.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from engine.files import atomic_write_text
from engine.records import MetricsRow, Sample, TokenTrace, metric
from engine.runtime.rundir import RunDir

# (metrics key, plot title) of the report's plots; titles and units from the metrics catalogue
SERIES = tuple((k, metric(k).title + (f" ({metric(k).unit})" if metric(k).unit else ""))
               for k in ("score_mean", "kl", "kl_coef", "response_len_mean", "policy_loss", "value_loss"))


def _mean(xs) -> float:
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.mean(xs) if xs else float("nan")


def trailing_means(values: list, window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    return [_mean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def _minutes_at(metrics: list[MetricsRow], i: int) -> float:
    """Minutes of training from the first step's start to the end of step ``i``."""
    if metrics[0].time is None:
        return float("nan")
    return (metrics[i].time - metrics[0].time + (metrics[0].timing("step") or 0.0)) / 60


def _rows(metrics) -> list[MetricsRow]:
    return [m if isinstance(m, MetricsRow) else MetricsRow.from_dict(m) for m in metrics]


def summarise(metrics, window: int = 10) -> dict:
    """Start/end figures of a run from its metrics rows (:class:`MetricsRow`, or the lines' dicts)."""
    metrics = _rows(metrics)
    if not metrics:
        return {}
    first, last = metrics[:window], metrics[-window:]
    rolling = trailing_means([m.get("score_mean") for m in metrics], window)
    start = _mean(m.get("score_mean") for m in first)
    reached = next((i for i in range(window - 1, len(rolling)) if rolling[i] >= start + 0.2), None)
    return {
        "steps": metrics[-1].step,
        "window": window,
        # the first step whose trailing window mean is at least 0.2 above the first window's
        "step_plus_0_2": metrics[reached].step if reached is not None else None,
        "minute_plus_0_2": _minutes_at(metrics, reached) if reached is not None and metrics[0].time is not None else None,
        "score_second_half": _mean(rolling[max(window - 1, len(rolling) // 2):]),
        "kl_max_window": max(trailing_means([m.get("kl") for m in metrics], window)),
        "score_start": start,
        "score_end": _mean(m.get("score_mean") for m in last),
        "kl_start": _mean(m.get("kl") for m in first),
        "kl_end": _mean(m.get("kl") for m in last),
        "step_s": _mean(m.timing("step") for m in metrics[1:] or metrics),
        "minutes": _minutes_at(metrics, len(metrics) - 1),
    }


FRONTIER_WINDOW = 20


def frontier(metrics, window: int = FRONTIER_WINDOW) -> list[dict]:
    """The score-KL frontier: consecutive ``window``-step windows of the run (the last one may be
    shorter), each with its first and last step, its number of steps and the means of
    ``score_mean``, ``kl`` and ``kl_coef`` over its steps (NaN where no step has the key)."""
    metrics = _rows(metrics)
    out = []
    for i in range(0, len(metrics), window):
        w = metrics[i:i + window]
        out.append({"first": w[0].step, "last": w[-1].step, "steps": len(w),
                    "score": _mean(m.get("score_mean") for m in w),
                    "kl": _mean(m.get("kl") for m in w),
                    "kl_coef": _mean(m.get("kl_coef") for m in w)})
    return out


def plot_frontier(windows: list[dict], out: Path) -> Path:
    """Mean score against mean KL, one point per window, joined in order of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs, ys = [w["kl"] for w in windows], [w["score"] for w in windows]
    ax.plot(xs, ys, marker="o", lw=1)
    for w, x, y in zip(windows, xs, ys):
        ax.annotate(f"{w['first']}-{w['last']}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean KL to reference (nats per response)", fontsize=9)
    ax.set_ylabel("mean score", fontsize=9)
    ax.set_title(f"score-KL frontier ({FRONTIER_WINDOW}-step windows)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def frontier_lines(windows: list[dict], png: Optional[Path]) -> list[str]:
    lines = ["## Score-KL frontier", "",
             f"Means over each {FRONTIER_WINDOW}-step window (the last may be shorter): how much score "
             "the policy bought with how much KL to the reference (metrics `score_mean`, `kl` and "
             "`kl_coef`).", "",
             "| steps | n | mean score | mean KL | mean KL coef | score per nat |",
             "|---|---:|---:|---:|---:|---:|"]
    for w in windows:
        per_nat = f"{w['score'] / w['kl']:.3f}" if w["kl"] > 0 else "–"
        lines.append(f"| {w['first']}–{w['last']} | {w['steps']} | {w['score']:.3f} | {w['kl']:.3f} | "
                     f"{w['kl_coef']:.4f} | {per_nat} |")
    if png is not None:
        lines += ["", f"![score-KL frontier]({png.name})"]
    return lines + [""]


def heldout_points(metrics, key: str = "heldout_accuracy") -> list[tuple[int, float]]:
    """``(step, value)`` of the held-out evaluations (eval.every): the starting policy's at step
    0 (``<key>_initial``), then the policy after each evaluated step."""
    pts = []
    for m in _rows(metrics):
        if isinstance(m.get(f"{key}_initial"), (int, float)):
            pts.append((m.step - 1, float(m.get(f"{key}_initial"))))
        if isinstance(m.get(key), (int, float)):
            pts.append((m.step, float(m.get(key))))
    return pts


def plot(metrics, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _rows(metrics)
    steps = [m.step for m in metrics]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    series = list(SERIES) + [("__step_time", "step time (s)")]
    for ax, (key, title) in zip(axes.flat, series):
        ys = [m.timing("step") if key == "__step_time" else m.get(key) for m in metrics]
        ax.plot(steps, ys, lw=0.8, alpha=0.6 if key == "score_mean" else 1.0)
        if key == "score_mean" and len(ys) >= 5:
            k = min(10, len(ys))
            ax.plot(steps, trailing_means(ys, k), lw=2, label=f"mean of last {k}")
            ax.legend(loc="lower right", fontsize=8)
        for x in swap_steps(metrics):           # a new reward version scores from this step on
            ax.axvline(x - 0.5, color="tab:red", lw=0.8, ls="--", alpha=0.7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    held = heldout_points(metrics)
    if held:
        ax = axes.flat[-1]
        ax.plot([p[0] for p in held], [p[1] for p in held], marker="o", lw=1.5)
        ax.set_title("held-out accuracy (greedy)", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    else:
        axes.flat[-1].axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def swap_steps(metrics: list[dict]) -> list[int]:
    """Steps from which a new reward version scored (``reward_version`` changed)."""
    out, prev = [], None
    for m in metrics:
        v = m.get("reward_version")
        if v is not None and prev is not None and v != prev:
            out.append(m["step"])
        prev = v if v is not None else prev
    return out


def _acc(d: Optional[dict], key: str) -> str:
    v = (d or {}).get(key)
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


def reward_versions_lines(run_dir: Path) -> list[str]:
    """The report's section on reward versions and refits (rewards/versions.json)."""
    import json

    try:
        reg = json.loads((Path(run_dir) / "rewards" / "versions.json").read_text())
    except (OSError, ValueError):
        return []
    versions, refits = reg.get("versions") or [], reg.get("refits") or []
    if len(versions) <= 1 and not refits:
        return []
    lines = ["## Reward versions", "",
             "Each step is scored by one version (`reward_version` in metrics.jsonl); a refit's figures are "
             "accuracies of the current and the new model on the held-out judgements and on the "
             "original held-out set.", "",
             "| version | from step | kind | source | held-out judgements (current → new) | original set (current → new) |",
             "|---:|---:|---|---|---|---|"]
    for v in versions:
        cur, new = v.get("current"), v.get("new")
        judg = f"{_acc(cur, 'judgement_accuracy')} → {_acc(new, 'judgement_accuracy')}" if new else "–"
        orig = f"{_acc(cur, 'original_accuracy')} → {_acc(new, 'original_accuracy')}" if new else "–"
        kind = v.get("kind", "?") + (f" {v['attempt']}" if v.get("attempt") else "")
        lines.append(f"| v{v.get('version')} | {v.get('from_step')} | {kind} | `{_cell(v.get('source', ''), 80)}` | "
                     f"{judg} | {orig} |")
    if refits:
        lines += ["", "| refit | at step | judgements (train / held out) | verdict | reason |", "|---:|---:|---|---|---|"]
        for r in refits:
            j = r.get("judgements") or {}
            lines.append(f"| {r.get('attempt')} | {r.get('from_step')} | {j.get('train', '–')} / "
                         f"{j.get('held_out', '–')} | {r.get('state')} | {_cell(r.get('reason') or '', 200)} |")
    return lines + [""]


def _cell(text: str, n: int = 160) -> str:
    t = " ".join(str(text).split()).replace("|", "\\|")
    return t if len(t) <= n else t[: n - 1] + "…"


def _monitor_lines(metrics: list[dict]) -> list[str]:
    """The reward-hacking monitors over the run (none for a run recorded before they existed)."""
    from engine.monitors import step_ranges, summarise_alerts

    if not any(m.get("alerts") is not None for m in metrics):
        return []
    seen = summarise_alerts(metrics)
    if not seen:
        return ["## Reward-hacking monitors", "", f"No monitor passed its threshold in {len(metrics)} steps.", ""]
    lines = ["## Reward-hacking monitors", "", "| monitor | steps over the threshold | peak | threshold | samples flagged |",
             "|---|---|---:|---:|---:|"]
    for name, s in seen.items():
        peak = f"{s['peak']:.3f}" if s["peak"] is not None else "–"
        flagged = "–" if s["samples"] is None else str(s["samples"])
        lines.append(f"| {name} | {step_ranges(s['steps'])} | {peak} | {s['threshold']} | {flagged} |")
    return lines + [""]


def moved_tokens(samples: list[Sample], top: int = 8, per_sample: int = 3, context: int = 4) -> dict:
    """The tokens of the last step that carries per-token data (``tokens`` in samples.jsonl)
    with the largest |KL| and the largest |advantage|: ``{"step", "estimator", "kl": rows,
    "advantage": rows}``, each row ``sample``, ``position``, ``piece``, ``context`` (up to
    ``context`` pieces either side, the token in ⟦ ⟧) and its four values; at most ``per_sample``
    rows from one response (an outcome estimator gives every token of a response one advantage).
    Empty when no sample has per-token data (a run written before it existed)."""
    traced = []
    for x in samples:
        if x.tokens is None:
            continue
        try:
            traced.append((x, TokenTrace.from_dict(x.tokens)))
        except ValueError:
            continue  # a malformed record: left out of the ranking, not fatal to the report
    if not traced:
        return {}
    step = max(x.step for x, _ in traced)
    last = [(x, t) for x, t in traced if x.step == step]

    def ranked(layer: str) -> list[dict]:
        cands = sorted(((abs(t.value(layer, i)), x.index, i, x, t) for x, t in last for i in range(len(t))),
                       key=lambda c: (-c[0], c[1], c[2]))
        rows, taken = [], {}
        for _, _, i, x, t in cands:
            if taken.get(x.id, 0) >= per_sample:
                continue
            taken[x.id] = taken.get(x.id, 0) + 1
            before = "".join(t.piece[max(0, i - context):i])
            after = "".join(t.piece[i + 1:i + 1 + context])
            rows.append({"sample": x.id, "position": i, "piece": t.piece[i],
                         "context": f"{before}⟦{t.piece[i]}⟧{after}",
                         **{k: t.value(k, i) for k in ("logprob", "ref_logprob", "kl", "advantage")}})
            if len(rows) == top:
                break
        return rows

    return {"step": step, "estimator": last[0][1].kl_estimator, "kl": ranked("kl"), "advantage": ranked("advantage")}


def moved_tokens_lines(moved: dict) -> list[str]:
    if not moved:
        return []
    lines = [f"## Tokens that moved most: step {moved['step']}", "",
             "The logged responses of the run's last step, token by token (`tokens` in samples.jsonl): "
             f"the largest per-token KL to the reference ({moved['estimator']}, the estimator that shaped the "
             "rewards) and the largest advantages, at most three from one response; the token is in ⟦ ⟧.", ""]
    for layer, title in (("kl", "|KL|"), ("advantage", "|advantage|")):
        lines += [f"Largest {title}:", "", "| sample | token # | in context | log-prob | ref log-prob | KL | advantage |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for r in moved[layer]:
            lines.append(f"| {r['sample']} | {r['position'] + 1} | {_cell(repr(r['context'])[1:-1], 80)} | "
                         f"{r['logprob']:.4f} | {r['ref_logprob']:.4f} | {r['kl']:+.4g} | {r['advantage']:+.4g} |")
        lines.append("")
    return lines


def write_report(run_dir: Path, out_dir: Optional[Path] = None, *, samples_per_side: int = 4) -> Path:
    rd = RunDir(run_dir)
    metrics = rd.read_metrics()
    if not metrics:
        raise ValueError(f"{rd.path} has no metrics yet (metrics.jsonl is empty)")
    samples = rd.read_samples()
    out_dir = Path(out_dir) if out_dir else rd.path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(metrics, out_dir / f"{rd.name}.png")
    s = summarise(metrics)
    st = rd.read_info()
    wall = ""
    if isinstance(st.created, (int, float)) and metrics[-1].time is not None:
        wall = f" ({(metrics[-1].time - st.created) / 60:.1f} minutes from the run's start, model loading included)"
    lines = [
        f"# Run report: {rd.name}",
        "",
        f"State **{st.state}** at step {s['steps']}; {s['minutes']:.1f} minutes of training{wall}; "
        f"mean step {s['step_s']:.2f} s.",
        "",
        f"| | first {s['window']} steps | last {s['window']} steps |",
        "|---|---|---|",
        f"| score (mean) | {s['score_start']:.3f} | {s['score_end']:.3f} |",
        f"| KL to reference | {s['kl_start']:.3f} | {s['kl_end']:.3f} |",
        "",
        f"Mean of the trailing {s['window']}-step score means over the second half of the run: "
        f"{s['score_second_half']:.3f}. Highest {s['window']}-step mean KL: {s['kl_max_window']:.2f}. "
        + (f"The {s['window']}-step mean first stood 0.2 above the first {s['window']} steps' at step "
           f"{s['step_plus_0_2']}" + (f", {s['minute_plus_0_2']:.1f} minutes into training." if s['minute_plus_0_2'] is not None else ".")
           if s["step_plus_0_2"] is not None else
           f"The {s['window']}-step mean never stood 0.2 above the first {s['window']} steps'."),
        "",
        f"![curves]({png.name})",
        "",
    ]
    held = heldout_points(metrics)
    if held:
        scores = dict(heldout_points(metrics, "heldout_score"))
        n = next((m.get("heldout_n") for m in metrics if m.get("heldout_n") is not None), "?")
        lines += ["## Held-out accuracy", "",
                  f"Greedy answers to {n} held-out problems (never trained on), evaluated every "
                  f"eval.every steps; step 0 is the starting model. Held-out accuracy went from "
                  f"{held[0][1]:.3f} (step {held[0][0]}) to {held[-1][1]:.3f} (step {held[-1][0]}); "
                  f"best {max(p[1] for p in held):.3f}.", "",
                  "| step | held-out accuracy | held-out score |", "|---:|---:|---:|"]
        lines += [f"| {st} | {acc:.3f} | {scores.get(st, float('nan')):.3f} |" for st, acc in held]
        lines.append("")
    windows = frontier(metrics)
    lines += frontier_lines(windows, plot_frontier(windows, out_dir / f"{rd.name}-frontier.png"))
    lines += [
        *_monitor_lines(metrics),
        *reward_versions_lines(rd.path),
        "## Per step",
        "",
        "| step | score | KL | KL coef | length | policy loss | value loss | step s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metrics:
        lines.append(
            f"| {m.step} | {m.get('score_mean', 0):.3f} | {m.get('kl', 0):.4f} | {m.get('kl_coef', 0):.4f} | "
            f"{m.get('response_len_mean', 0):.1f} | {m.get('policy_loss', 0):.4f} | {m.get('value_loss', 0):.4f} | "
            f"{m.timing('step') or 0:.2f} |")
    if samples:
        first_step, last_step = samples[0].step, samples[-1].step
        a = [x for x in samples if x.step == first_step][:samples_per_side]
        b = [x for x in samples if x.step == last_step][:samples_per_side]
        lines += ["", f"## Samples: step {first_step} and step {last_step}", "",
                  f"| step {first_step} | score | step {last_step} | score |", "|---|---:|---|---:|"]
        def side(x) -> str:
            return f"{_cell(x.prompt + ' ⟶ ' + x.response)} | {x.score:.3f}" if x else " | "

        for i in range(max(len(a), len(b))):
            lines.append(f"| {side(a[i] if i < len(a) else None)} | {side(b[i] if i < len(b) else None)} |")
        lines += ["", *moved_tokens_lines(moved_tokens(samples))]
    md = out_dir / f"{rd.name}.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md
