"""Refit the reward model from a run's judgements, and decide whether the new one may replace it.

The supervisor runs this as a separate, low-priority (nice'd) process while training goes on:

    python -m engine.refit RUN_DIR --attempt N --current SOURCE --out FOLDER --result FILE

1. The run's judgements (``labels.jsonl``: good/bad marks and pairs) in the order they were
   made; the newest ``reward.refit.holdout`` share is held out (the new model has to predict
   judgements it was not trained on), the rest is training data.
2. The model to start from: the current reward when it is a trainable model (a folder,
   ``bundled:minilm-sentiment``, a hub id), else ``reward.refit.base`` (default: the bundled
   MiniLM sentiment classifier) when the current reward is a lexicon or a function.
3. Training: :func:`engine.reward_training.refit_reward_model` -- Bradley-Terry on pairs,
   binary cross-entropy on marks, mixed with ``reward.refit.mix_ratio`` rows of the model's
   original training data per judgement.
4. Evaluation of the current reward and of the new model, each scored exactly as the run
   scores (``build_reward`` with the run's reward settings): on the held-out judgements (pairs
   ranked correctly, ties count half; marks: score above the decision threshold = good) and on
   the original held-out set (``reward.refit.original_eval_rows`` rows).
5. The verdict: the new model is accepted only if it is at least as good on the held-out
   judgements and at most ``reward.refit.max_original_drop`` worse on the original held-out set.
   The result (figures, verdict, reason) is written atomically to ``--result``; a refused model's
   folder is removed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from engine.judgements import read_judgements

Progress = Callable[[str], None]
DEFAULT_REFIT_BASE = "bundled:minilm-sentiment"


class RefitError(RuntimeError):
    """A refit cannot run (too few judgements, no model to start from)."""


@dataclass(frozen=True)
class RefitSettings:
    """``reward.refit`` with its defaults filled in (``engine.config.REFIT_KEYS`` documents them)."""
    every_labels: Optional[int]
    base: Optional[str]
    holdout: float
    min_judgements: int
    mix_ratio: float
    original_eval_rows: int
    max_original_drop: float
    epochs: int
    lr: float
    batch_size: int
    nice: int


def refit_settings(cfg) -> RefitSettings:
    from engine.config.schema import REFIT_DEFAULTS

    given = cfg.reward.refit or {}
    return RefitSettings(**{k: given.get(k, d) for k, d in REFIT_DEFAULTS.items()})


def is_trainable_source(source: str) -> bool:
    """A reward source that is a model the refit can fine-tune (a folder or hub id of a sequence
    classifier, or bundled:minilm-sentiment), not a lexicon, a rule or a function."""
    from engine import sources

    src = sources.parse(source)
    if src.scheme == "bundled":
        return src.name == "minilm-sentiment"
    if src.scheme == "local":
        return (Path(src.name).expanduser() / "config.json").is_file()
    return src.scheme == "hub"


def model_folder(source: str, progress: Optional[Progress] = None) -> str:
    """The folder (or hub id) holding the weights of a trainable reward source."""
    if source == "bundled:minilm-sentiment":
        from engine.reward_training import ensure_default_sentiment_rm

        return str(ensure_default_sentiment_rm(progress))
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source


def build_reward_source(cfg, spec: str, device: str = "cpu", progress: Optional[Progress] = None):
    """The reward source ``spec`` with the run's reward settings: scored exactly as the run scores."""
    from engine.rewards import build_reward

    r = cfg.reward
    return build_reward(spec, device=device, dtype=r.dtype, quantization=r.quantization,
                        score_label=r.score_label, score_kind=r.score_kind, score_text=r.score_text,
                        max_length=r.max_length, batch_size=r.batch_size, progress=progress)


def decision_threshold(source) -> float:
    """Score above which a reward source calls a text good: 0 for a logit, else 0.5 (a
    probability, a lexicon's [0, 1] score, a function's score)."""
    from engine.rewards import ClassifierReward

    if isinstance(source, ClassifierReward) and (source.num_labels == 1 or source.score_kind == "logit"):
        return 0.0
    return 0.5


def evaluate_source(source, marks: list[dict], pairs: list[dict], original: list, positive: int = 1) -> dict:
    """Accuracy of a reward source on held-out judgements and on original labelled rows."""
    thr = decision_threshold(source)
    out: dict = {"threshold": thr}
    if pairs:
        sc = source.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        sr = source.score([p.get("rejected_prompt", p["prompt"]) for p in pairs], [p["rejected"] for p in pairs])
        hits = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(sc, sr)]
        out["pair_accuracy"] = sum(hits) / len(hits)
    else:
        hits = []
    if marks:
        s = source.score([m["prompt"] for m in marks], [m["response"] for m in marks])
        mhits = [1.0 if (v > thr) == (m["label"] == "good") else 0.0 for v, m in zip(s, marks)]
        out["label_accuracy"] = sum(mhits) / len(mhits)
        hits = hits + mhits
    out["judgement_accuracy"] = sum(hits) / len(hits) if hits else None
    out["judgements"] = len(hits)
    if original:
        s = source.score([""] * len(original), [r.text for r in original])
        ok = [1.0 if (v > thr) == (r.label == positive) else 0.0 for v, r in zip(s, original)]
        out["original_accuracy"] = sum(ok) / len(ok)
        out["original_rows"] = len(ok)
    else:
        out["original_accuracy"] = None
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def verdict(cur: dict, new: dict, max_drop: float) -> tuple[bool, str]:
    """(accepted, why): at least as good on the held-out judgements, and at most ``max_drop``
    worse on the original held-out set."""
    cj, nj = cur.get("judgement_accuracy"), new.get("judgement_accuracy")
    co, no = cur.get("original_accuracy"), new.get("original_accuracy")
    figures = (f"held-out judgements {_fmt(cj)} -> {_fmt(nj)}, original held-out set "
               f"{_fmt(co)} -> {_fmt(no)}")
    if nj is None or cj is None:
        return False, f"no held-out judgements to compare on ({figures})"
    if nj < cj:
        return False, f"worse on the held-out judgements ({figures})"
    if co is not None and no is not None and no < co - max_drop:
        return False, (f"more than {max_drop:.3f} worse on the original held-out set ({figures})")
    on_original = ("not worse on the original set" if co is None or no is None or no >= co
                   else f"within {max_drop:.3f} of the current on the original set")
    return True, f"at least as good on the held-out judgements and {on_original} ({figures})"


def training_rows(items: list[dict], score_text: str) -> list:
    """Judgements as training rows, their text exactly as the run's reward reads it."""
    from engine.reward_training import JudgedRow, PreferenceRow
    from engine.rewards import join_prompt_response

    def text(prompt: str, response: str) -> str:
        return response if score_text == "response" else join_prompt_response(prompt, response)

    rows = []
    for j in items:
        if "chosen" in j:
            rows.append(PreferenceRow("", text(j["prompt"], j["chosen"]),
                                      text(j.get("rejected_prompt", j["prompt"]), j["rejected"])))
        else:
            rows.append(JudgedRow(text(j["prompt"], j["response"]), j["label"] == "good"))
    return rows


def split_judgements(items: list[dict], holdout: float) -> tuple[list[dict], list[dict]]:
    """(train, held out): the newest ``holdout`` share (at least one) is held out."""
    k = max(1, int(round(holdout * len(items))))
    return items[:-k], items[-k:]


def run_refit(run_dir: Path, attempt: int, current: str, out: Path, *, progress: Progress) -> dict:
    from engine.config import validate_text
    from engine.reward_training import original_rows, read_reward_metadata, refit_reward_model

    t0 = time.time()
    run_dir = Path(run_dir)
    res = validate_text((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    if res.config is None:
        raise RefitError("the run's config.yaml is invalid: " + "; ".join(str(i) for i in res.issues))
    cfg = res.config
    rc = refit_settings(cfg)
    j = read_judgements(run_dir)
    items = j.ordered()
    if len(items) < rc.min_judgements:
        raise RefitError(f"a refit needs at least {rc.min_judgements} judgements "
                         f"(reward.refit.min_judgements); the run has {len(items)}")
    train_j, held = split_judgements(items, rc.holdout)
    progress(f"{len(items)} judgement(s): {len(train_j)} to train on, the newest {len(held)} held out")

    start = current if is_trainable_source(current) else (rc.base or DEFAULT_REFIT_BASE)
    if not is_trainable_source(start):
        raise RefitError(f"reward.refit.base {start!r} is not a trainable model (a folder, "
                         f"bundled:minilm-sentiment or a hub id)")
    if start != current:
        progress(f"the current reward '{current}' is not a trainable model: starting from '{start}'")
    folder = model_folder(start, progress)
    meta = read_reward_metadata(folder)
    orig_train, orig_eval = original_rows(meta.get("data"), rc.original_eval_rows, cfg.run.seed)
    labels = meta.get("labels") or []
    positive = int(meta.get("score_label", 1)) if labels else 1
    if not orig_eval:
        progress("the original training data of the model is not known: no original rows mixed in "
                 "or evaluated")

    device = "cpu"
    marks = [h for h in held if "chosen" not in h]
    pairs = [h for h in held if "chosen" in h]
    progress(f"evaluating the current reward '{current}'")
    cur_src = build_reward_source(cfg, current, device, progress)
    try:
        cur = evaluate_source(cur_src, marks, pairs, orig_eval, positive)
    finally:
        cur_src.close()
    score_label = cfg.reward.score_label
    if isinstance(score_label, str):
        try:
            from transformers import AutoConfig

            score_label = int(AutoConfig.from_pretrained(folder).label2id[score_label])
        except Exception:  # noqa: BLE001 - fall back to the positive class
            score_label = positive
    result = refit_reward_model(
        folder, training_rows(train_j, cfg.reward.score_text), out=out, original=orig_train,
        mix_rows=int(round(rc.mix_ratio * len(train_j))), epochs=rc.epochs, lr=rc.lr,
        batch_size=rc.batch_size, max_length=cfg.reward.max_length, seed=cfg.run.seed + attempt,
        score_label=int(score_label), progress=progress,
        extra_meta={"run": str(run_dir), "attempt": attempt, "started_from": start})
    progress(f"trained in {result.seconds:.0f} s; evaluating the new model")
    new_src = build_reward_source(cfg, str(out), device, progress)
    try:
        new = evaluate_source(new_src, marks, pairs, orig_eval, positive)
    finally:
        new_src.close()
    ok, why = verdict(cur, new, rc.max_original_drop)
    return {"attempt": attempt, "accepted": ok, "reason": why, "current_source": current,
            "started_from": start, "source": str(out) if ok else None, "current": cur, "new": new,
            "judgements": {"total": len(items), "train": len(train_j), "held_out": len(held),
                           "pairs": len(j.pairs), "good": j.good, "bad": j.bad},
            "judgement_rows": j.rows, "seconds": round(time.time() - t0, 1), "time": time.time()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.refit")
    ap.add_argument("run_dir")
    ap.add_argument("--attempt", type=int, required=True)
    ap.add_argument("--current", required=True, help="the run's current reward source")
    ap.add_argument("--out", required=True, help="folder for the new reward model")
    ap.add_argument("--result", required=True, help="JSON file for the figures and the verdict")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from engine.files import atomic_write_json

    def progress(msg: str) -> None:
        print(msg, flush=True)

    out = Path(a.out)
    try:
        result = run_refit(Path(a.run_dir), a.attempt, a.current, out, progress=progress)
    except Exception as e:  # noqa: BLE001 - the supervisor reads the reason from the result
        result = {"attempt": a.attempt, "accepted": False, "error": f"{type(e).__name__}: {e}",
                  "reason": f"the refit failed: {type(e).__name__}: {e}", "time": time.time()}
    if not result.get("accepted"):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    atomic_write_json(Path(a.result), result)
    progress("done: " + ("accepted" if result.get("accepted") else "refused") + f": {result['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
