"""Refit the reward model from a run's judgements, and decide whether the new one may replace it.

The supervisor runs this as a separate, low-priority (nice'd) process while training goes on:

    python -m engine.refit RUN_DIR --attempt N --current SOURCE --out FOLDER --result FILE

1. The run's judgements (``labels.jsonl``: good/bad marks and pairs).
2. ``reward.refit.method: head`` (the default, ``engine/preference.py``): a preference head on
   frozen features of the judged responses, added to the base reward (the current one, or the
   current one's base when it is itself a refit). Every judgement is held out once (5-fold:
   judged by a head fitted without it), then the head is fitted on all. Seconds, not minutes.
   ``method: finetune``: the reward model itself (or ``reward.refit.base`` when the current
   reward is a lexicon or a function) is fine-tuned on the older judgements with rows of its
   original data mixed in (``engine.reward_training.refit_reward_model``); the newest
   ``reward.refit.holdout`` share is held out.
3. The current reward and the new one, each scored exactly as the run scores, on the held-out
   judgements (pairs ranked as judged, ties half; marks: score above the decision threshold =
   good) and on the base model's original held-out set (``original_accuracy``: the share of
   its (positive, negative) pairs ranked right; none for a lexicon or a function).
4. The verdict (:func:`verdict`): accepted only if the new model agrees with the held-out
   judgements *significantly* better than the current one (a one-sided exact sign test over the
   judgements where the two differ, at ``reward.refit.confidence``) and ranks the original set at
   most ``reward.refit.max_original_drop`` worse. A refit that changes nothing is refused, and a
   refused refit says what is missing ("needs ~N more judgements"). The result (figures, the test,
   the verdict) is written atomically to ``--result``; a refused model's folder is removed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from engine.config import RefitSettings
from engine.judgements import read_judgements

Progress = Callable[[str], None]
DEFAULT_REFIT_BASE = "bundled:minilm-sentiment"


class RefitError(RuntimeError):
    """A refit cannot run (too few judgements, no model to start from)."""


def refit_settings(cfg) -> RefitSettings:
    """``reward.refit`` of ``cfg`` (a section of the schema, ``engine.config.schema.RefitSettings``),
    every key at its default when the config says null or nothing, and ``nice`` resolved: null is
    0 for a head refit (seconds of work: a fair share of the cores) and 10 for a fine-tune."""
    import dataclasses

    rc = cfg.reward.refit if cfg.reward.refit is not None else RefitSettings()
    if rc.nice is None:
        rc = dataclasses.replace(rc, nice=0 if rc.method == "head" else 10)
    return rc


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
    from engine.rewards import ClassifierReward, PreferenceReward

    if isinstance(source, PreferenceReward):
        return decision_threshold(source.base)
    if isinstance(source, ClassifierReward) and (source.num_labels == 1 or source.score_kind == "logit"):
        return 0.0
    return 0.5


def evaluate_source(source, marks: list[dict], pairs: list[dict], original: list, positive: int = 1) -> dict:
    """Accuracy of a reward source on held-out judgements and on original labelled rows;
    ``hits`` lists, per judgement (pairs first, then marks), 1 when the source agrees with it,
    0.5 on a tie, else 0 (the paired test of :func:`verdict` compares two sources item by item)."""
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
    out.update(original_accuracy(source, original, positive, thr))
    return _with_hits(out, hits)


def original_accuracy(source, original: list, positive: int = 1, thr: Optional[float] = None) -> dict:
    """How well a source still separates the original labelled rows: ``original_accuracy`` is the
    share of (positive, negative) row pairs it scores in the right order (ties half), a measure
    that a constant shift of the scores (which PPO ignores) does not change; ``original_threshold_
    accuracy`` is the share of rows on the right side of the decision threshold."""
    if not original:
        return {"original_accuracy": None}
    thr = decision_threshold(source) if thr is None else thr
    return original_accuracy_of(source.score([""] * len(original), [r.text for r in original]), original,
                                positive, thr)


def original_accuracy_of(scores, original: list, positive: int, thr: float) -> dict:
    """:func:`original_accuracy` from scores already computed on the rows of ``original``."""
    if not original:
        return {"original_accuracy": None}
    s = [float(v) for v in scores]
    pos = [v for v, r in zip(s, original) if r.label == positive]
    neg = [v for v, r in zip(s, original) if r.label != positive]
    ok = [1.0 if (v > thr) == (r.label == positive) else 0.0 for v, r in zip(s, original)]
    out = {"original_threshold_accuracy": sum(ok) / len(ok), "original_rows": len(ok)}
    if pos and neg:
        import torch

        p, n = torch.tensor(pos), torch.tensor(neg)
        out["original_accuracy"] = float(((p[:, None] > n[None, :]).float()
                                          + 0.5 * (p[:, None] == n[None, :]).float()).mean())
    else:
        out["original_accuracy"] = out["original_threshold_accuracy"]
    return out


def _with_hits(out: dict, hits: list[float]) -> dict:
    out["judgement_accuracy"] = sum(hits) / len(hits) if hits else None
    out["judgements"] = len(hits)
    out["hits"] = hits
    return out


def sign_test(new_hits: list[float], cur_hits: list[float]) -> dict:
    """One-sided exact sign test on paired judgements: of the judgements where the two models
    differ, does the new one get more right than chance allows? ``p`` = P(X >= better) for
    X ~ Binomial(better + worse, 1/2)."""
    better = sum(1 for a, b in zip(new_hits, cur_hits) if a > b)
    worse = sum(1 for a, b in zip(new_hits, cur_hits) if a < b)
    return {"better": better, "worse": worse, "p": binomial_tail(better, better + worse)}


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k), X ~ Binomial(n, 1/2)."""
    if n <= 0 or k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n


def judgements_needed(better: int, worse: int, n: int, alpha: float, share: float = 1.0) -> Optional[int]:
    """How many more judgements a refit needs for its advantage to be significant, if the share
    of judgements where it does better (and worse) stays as measured; None when it does not do
    better at all. ``share``: the fraction of judgements that are held out."""
    if better <= worse or n <= 0:
        return None
    if binomial_tail(better, better + worse) <= alpha:
        return 0
    for m in range(n + 1, 50 * n + 2):
        b, w = round(better * m / n), round(worse * m / n)
        if binomial_tail(b, b + w) <= alpha:
            return max(1, math.ceil((m - n) / max(share, 1e-9)))
    return None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def verdict(cur: dict, new: dict, max_drop: float, confidence: float = 0.9, held_out_share: float = 1.0
            ) -> tuple[bool, str, dict]:
    """(accepted, why, test): the new model must agree with the held-out judgements better than
    the current one, significantly for their number (a one-sided sign test at ``confidence``),
    and be at most ``max_drop`` worse on the original held-out set. A refused refit says what is
    missing, e.g. how many more judgements would make the same advantage significant."""
    cj, nj = cur.get("judgement_accuracy"), new.get("judgement_accuracy")
    co, no = cur.get("original_accuracy"), new.get("original_accuracy")
    n = int(new.get("judgements") or 0)
    figures = (f"held-out judgements {_fmt(cj)} -> {_fmt(nj)} on {n}, original held-out set "
               f"{_fmt(co)} -> {_fmt(no)}")
    if nj is None or cj is None:
        return False, f"no held-out judgements to compare on ({figures})", {}
    test = sign_test(new.get("hits") or [], cur.get("hits") or [])
    alpha = 1.0 - confidence
    test.update(alpha=round(alpha, 6), confidence=confidence, held_out=n)
    more = judgements_needed(test["better"], test["worse"], n, alpha, held_out_share)
    test["needs_more"] = more
    if test["p"] > alpha:
        if more is None:
            need = ("it does not agree with the judge more often than the current reward; more "
                    "judgements of the same taste, or other reward.refit.features, may help")
        else:
            need = f"needs ~{more} more judgement(s) for the same advantage to be significant"
        return False, (f"not significantly better on the held-out judgements (better on "
                       f"{test['better']}, worse on {test['worse']} of {n}; p = {test['p']:.3f} > "
                       f"{alpha:.2f}): {need} ({figures})"), test
    if co is not None and no is not None and no < co - max_drop:
        return False, (f"more than {max_drop:.3f} worse on the original held-out set ({figures})"), test
    on_original = ("not worse on the original set" if co is None or no is None or no >= co
                   else f"within {max_drop:.3f} of the current on the original set")
    return True, (f"better on the held-out judgements (on {test['better']}, worse on "
                  f"{test['worse']} of {n}; p = {test['p']:.3f} <= {alpha:.2f}) and {on_original} "
                  f"({figures})"), test


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
    fit = _refit_head if rc.method == "head" else _refit_finetune
    out_res = fit(cfg, rc, items, run_dir, attempt, current, out, progress)
    out_res.update({"attempt": attempt, "current_source": current, "method": rc.method,
                    "source": str(out) if out_res["accepted"] else None,
                    "judgement_rows": j.rows, "seconds": round(time.time() - t0, 1), "time": time.time()})
    out_res["judgements"].update(total=len(items), pairs=len(j.pairs), good=j.good, bad=j.bad)
    return out_res


def _original_set(cfg, rc: RefitSettings, start: str, progress: Progress):
    """(folder, original train rows, original held-out rows, positive label) of the model a refit
    starts from or reads its features with."""
    from engine.reward_training import original_rows, read_reward_metadata

    folder = model_folder(start, progress)
    meta = read_reward_metadata(folder)
    orig_train, orig_eval = original_rows(meta.get("data"), rc.original_eval_rows, cfg.run.seed)
    positive = int(meta.get("score_label", 1)) if (meta.get("labels") or []) else 1
    if not orig_eval:
        progress("the original training data of the model is not known: no original rows mixed in "
                 "or evaluated")
    return folder, orig_train, orig_eval, positive


def _refit_finetune(cfg, rc: RefitSettings, items, run_dir, attempt, current, out, progress) -> dict:
    """Fine-tune the reward model on the older judgements; the newest ``holdout`` share judges."""
    from engine.reward_training import refit_reward_model

    train_j, held = split_judgements(items, rc.holdout)
    progress(f"{len(items)} judgement(s): {len(train_j)} to train on, the newest {len(held)} held out")
    start = current if is_trainable_source(current) else (rc.base or DEFAULT_REFIT_BASE)
    if not is_trainable_source(start):
        raise RefitError(f"reward.refit.base {start!r} is not a trainable model (a folder, "
                         f"bundled:minilm-sentiment or a hub id)")
    if start != current:
        progress(f"the current reward '{current}' is not a trainable model: starting from '{start}'")
    folder, orig_train, orig_eval, positive = _original_set(cfg, rc, start, progress)
    marks = [h for h in held if "chosen" not in h]
    pairs = [h for h in held if "chosen" in h]
    progress(f"evaluating the current reward '{current}'")
    cur_src = build_reward_source(cfg, current, "cpu", progress)
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
    new_src = build_reward_source(cfg, str(out), "cpu", progress)
    try:
        new = evaluate_source(new_src, marks, pairs, orig_eval, positive)
    finally:
        new_src.close()
    ok, why, test = verdict(cur, new, rc.max_original_drop, rc.confidence,
                            held_out_share=len(held) / max(1, len(items)))
    return {"accepted": ok, "reason": why, "test": test, "started_from": start, "current": cur, "new": new,
            "judgements": {"train": len(train_j), "held_out": len(held), "held_out_how": "the newest"}}


def _judged_texts(items: list[dict]):
    """The distinct (prompt, response) texts of the judgements and the judgements as rows of them."""
    from engine.preference import Judged

    index: dict[tuple[str, str], int] = {}

    def at(prompt: str, response: str) -> int:
        return index.setdefault((prompt, response), len(index))

    pairs, marks = [], []
    for it in items:
        if "chosen" in it:
            pairs.append((at(it["prompt"], it["chosen"]), at(it.get("rejected_prompt", it["prompt"]), it["rejected"])))
    for it in items:
        if "chosen" not in it:
            marks.append((at(it["prompt"], it["response"]), it["label"] == "good"))
    texts = sorted(index, key=index.get)
    return [p for p, _ in texts], [r for _, r in texts], Judged(pairs, marks)


class _HeadInputs:
    """What a head refit reads, each model loaded once: the base reward's scores and the head's
    features (the base model's hidden layer and/or the sentence encoder) of any texts -- the
    judged ones and the original held-out set alike."""

    def __init__(self, cfg, rc: RefitSettings, base_source: str, progress: Progress):
        from engine import preference as pref
        from engine.rewards import ClassifierReward

        self.kind = rc.features
        self.base = build_reward_source(cfg, base_source, "cpu", progress)
        self.encoder, self.encoder_source, self.sentence = None, None, None
        try:
            if pref.needs_encoder(self.kind):
                if isinstance(self.base, ClassifierReward):
                    self.encoder, self.encoder_source = self.base, base_source
                else:
                    self.encoder_source = rc.base or DEFAULT_REFIT_BASE
                    progress(f"the base reward '{base_source}' is not a model: features from "
                             f"'{self.encoder_source}'")
                    self.encoder = build_reward_source(cfg, self.encoder_source, "cpu", progress)
                    if not isinstance(self.encoder, ClassifierReward):
                        raise RefitError(f"reward.refit.base {self.encoder_source!r} is not a sequence-"
                                         f"classification model; the features {self.kind!r} need one")
            if pref.needs_sentence(self.kind):
                self.sentence = pref.SentenceEncoder(progress=progress)
        except BaseException:
            self.close()
            raise
        self.threshold = decision_threshold(self.base)

    def read(self, prompts: list[str], responses: list[str]):
        """(base scores, features) of the texts, as float tensors."""
        from engine import preference as pref

        return pref.base_and_features(self.kind, self.base, self.encoder, self.sentence, prompts, responses)

    def close(self) -> None:
        seen = set()
        for m in (self.base, self.encoder, self.sentence):
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                m.close()


def _kfold_hits(rc: RefitSettings, base, feats, judged, k: int, thr: float) -> list[float]:
    """Every judgement held out once: judged by ``base + w * z`` of a head fitted without it."""
    from engine import preference as pref

    hits: list[Optional[float]] = [None] * len(judged)
    for hold in pref.folds(len(judged), k):
        keep = set(hold)
        train = judged.subset([i for i in range(len(judged)) if i not in keep])
        head = pref.fit_head(rc.features, feats, train, pref.choose_l2(rc.features, feats, train))
        w = rc.weight * pref.spread(base[train.rows()])
        fold = pref.combined_hits(pref.combined(base, head.z(feats), w), judged.subset(hold), thr)
        for i, h in zip(sorted(hold, key=lambda i: (i >= len(judged.pairs), i)), fold):
            hits[i] = h
    return [float(h) for h in hits]


def _current_on(cfg, current: str, base_source: str, base, thr: float, prompts, responses, judged, orig,
                positive, orig_base, progress) -> dict:
    """The current reward on the judgements (every one held out for it: it was not fitted on the
    new ones) and on the original held-out set; the base's scores are reused when it is the base."""
    import torch

    from engine import preference as pref

    if current == base_source:
        cur = _with_hits({"threshold": thr}, pref.combined_hits(base, judged, thr))
        cur.update(original_accuracy_of(orig_base, orig, positive, thr) if orig else {"original_accuracy": None})
        return cur
    src = build_reward_source(cfg, current, "cpu", progress)
    try:
        thr = decision_threshold(src)
        scores = torch.tensor(src.score(prompts, responses), dtype=torch.float32)
        cur = _with_hits({"threshold": thr}, pref.combined_hits(scores, judged, thr))
        cur.update(original_accuracy(src, orig, positive))
    finally:
        src.close()
    return cur


def _refit_head(cfg, rc: RefitSettings, items, run_dir, attempt, current, out, progress) -> dict:
    """A preference head on frozen features, added to the base reward (engine/preference.py).
    Every judgement is held out once: k-fold, each fold judged by a head fitted without it."""
    import shutil

    from engine import preference as pref

    base_source = current
    if pref.is_preference_folder(current):       # a second refit: a new taste on the same base
        base_source = pref.read(Path(current).expanduser())["base_source"]
    prompts, responses, judged = _judged_texts(items)
    k = min(5, len(judged))
    progress(f"{len(items)} judgement(s) on {len(responses)} text(s); features {rc.features}, "
             f"{k}-fold: each judgement is judged by a head fitted without it")
    orig, positive = [], 1      # the base model's own held-out set (a lexicon or a function has none)
    if is_trainable_source(base_source) and rc.original_eval_rows:
        _, _, orig, positive = _original_set(cfg, rc, base_source, progress)
    inputs = _HeadInputs(cfg, rc, base_source, progress)
    try:
        base, feats = inputs.read(prompts, responses)
        new_hits = _kfold_hits(rc, base, feats, judged, k, inputs.threshold)
        l2 = pref.choose_l2(rc.features, feats, judged)
        head = pref.fit_head(rc.features, feats, judged, l2)
        w = rc.weight * pref.spread(base[judged.rows()])
        progress(f"head fitted (L2 {l2:g}); preference weight {rc.weight:g} x the base's spread = {w:.4f}")
        orig_base = ob = orig_z = None
        if orig:
            ob, of = inputs.read([""] * len(orig), [r.text for r in orig])
            orig_base, orig_z = ob.tolist(), head.z(of)
            progress(f"both rewards scored on {len(orig)} row(s) of the original held-out set")
        new = _with_hits({"threshold": inputs.threshold}, new_hits)
        new.update(original_accuracy_of(pref.combined(ob, orig_z, w).tolist(), orig, positive, inputs.threshold)
                   if orig else {"original_accuracy": None})
        encoder_source = inputs.encoder_source
    finally:
        inputs.close()
    cur = _current_on(cfg, current, base_source, base, inputs.threshold, prompts, responses, judged, orig,
                      positive, orig_base, progress)
    tmp = out.parent / f".{out.name}.tmp-head"
    pref.save(tmp, head, base_source=base_source, encoder_source=encoder_source, weight=rc.weight, w=w,
              info={"l2": l2, "judgements": len(judged), "run": str(run_dir), "attempt": attempt})
    pref.Head.from_json(pref.read(tmp)["head"])       # what the run will load reads back
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    ok, why, test = verdict(cur, new, rc.max_original_drop, rc.confidence)
    return {"accepted": ok, "reason": why, "test": test, "started_from": base_source, "current": cur,
            "new": new, "weight": rc.weight, "w": w, "l2": l2, "features": rc.features,
            "judgements": {"train": len(judged), "held_out": len(judged), "held_out_how": f"{k}-fold"}}


def main(argv=None, progress: Optional[Progress] = None) -> int:
    """``python -m engine.refit RUN_DIR --attempt N --current SOURCE --out DIR --result FILE``;
    the supervisor calls it in a process of its own (``engine/runtime/refit_proc.py``) with
    ``progress`` sending each line back to it. Without ``progress`` the lines go to stdout."""
    ap = argparse.ArgumentParser(prog="python -m engine.refit")
    ap.add_argument("run_dir")
    ap.add_argument("--attempt", type=int, required=True)
    ap.add_argument("--current", required=True, help="the run's current reward source")
    ap.add_argument("--out", required=True, help="folder for the new reward model")
    ap.add_argument("--result", required=True, help="JSON file for the figures and the verdict")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from engine.files import atomic_write_json

    if progress is None:
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
