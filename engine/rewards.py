"""Reward sources behind one batched interface.

``build_reward(source, ...)`` returns a ``RewardSource``; ``reward(prompts, responses)``
returns one finite float per response (``RewardSource.__call__`` = ``score`` + the checks of
``checked_scores``). Source strings:

* ``lexicon:vader`` -- VADER's compound sentiment score of the *response* alone, mapped from
  [-1, 1] to [0, 1] as ``(compound + 1) / 2``. Fast, needs no model; for tests and as a
  no-training baseline (about 0.69 accuracy on IMDB, weaker than a trained classifier).
* ``python:pkg.mod:function`` or plain ``pkg.mod:function`` -- imported and called as
  ``function(prompts, responses)``, which must return a sequence of numbers, one per response;
  a function with a third parameter is called as ``function(prompts, responses, answers)``
  with each row's reference answer (None where the prompt source has none).
* ``rule:arithmetic``, ``rule:exact`` -- rule-based (verifiable) rewards that check each
  response against its row's reference answer (``engine.tasks``).
* ``bundled:minilm-sentiment`` -- the MiniLM sentiment classifier trained on the bundled
  movie reviews by ``engine.reward_training.ensure_default_sentiment_rm`` (trained once on
  first use, a few minutes on 2 CPU cores, then loaded from the cache).
* a local folder or a hub id of a sequence-classification model.

Classifier rewards score ``join_prompt_response(prompt, response)`` -- the prompt and the
response concatenated as one text -- by default (``score_text="prompt+response"``): in the
classic sentiment setup the prompt is the start of a review and the response continues it.
Pass ``score_text="response"`` to score the response alone. Give the classifier the *raw*
prompts, not chat-template-formatted ones. The score is the softmax probability of
``score_label`` (``score_kind="prob"``) or its raw logit (``"logit"``); a model with a single
output (e.g. a Bradley-Terry reward model from preference pairs) always gives its logit.
"""
from __future__ import annotations

import gc
import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from engine import sources

# shared with reward_training (which writes the folders this module loads); names kept here
from engine.reward_folder import REWARD_METADATA, join_prompt_response, quiet_transformers

Progress = Callable[[str], None]

ACCEPTED_FORMS = (
    "lexicon:vader",
    "python:pkg.module:function (or plain pkg.module:function)",
    "rule:arithmetic, rule:exact",
    "bundled:minilm-sentiment",
    "a local folder of a sequence-classification model",
    "a hub id of a sequence-classification model (owner/name)",
)

_FUNC_RE = sources.PY_FUNC_RE      # the grammar of source strings is engine/sources.py's
_HUB_ID_RE = sources.HUB_ID_RE


class RewardError(ValueError):
    """A reward source could not be built, or returned unusable scores."""


def _accepted() -> str:
    return "accepted reward sources: " + "; ".join(ACCEPTED_FORMS)


def checked_scores(source_name: str, scores: Any, n: int) -> list[float]:
    """Validate a reward function's output: exactly ``n`` finite numbers.

    Accepts lists/tuples, numpy arrays and torch tensors. Raises ``RewardError`` naming the
    source and the offending sample index for a wrong count, a non-numeric value, NaN or inf.
    """
    if hasattr(scores, "detach"):  # torch tensor
        scores = scores.detach().float().cpu().reshape(-1).tolist()
    elif hasattr(scores, "tolist") and not isinstance(scores, (str, bytes)):  # numpy
        scores = scores.tolist()
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        raise RewardError(f"reward source {source_name!r} returned {type(scores).__name__}, "
                          f"expected a sequence of {n} numbers")
    scores = list(scores)
    if len(scores) != n:
        raise RewardError(f"reward source {source_name!r} returned {len(scores)} scores for "
                          f"{n} samples")
    out = []
    for i, s in enumerate(scores):
        if isinstance(s, (str, bytes)) or s is None:
            raise RewardError(f"reward source {source_name!r}: score for sample {i} is not a "
                              f"number ({s!r})")
        try:
            v = float(s)
        except (TypeError, ValueError):
            raise RewardError(f"reward source {source_name!r}: score for sample {i} is not a "
                              f"number ({type(s).__name__}: {s!r:.40})") from None
        if math.isnan(v):
            raise RewardError(f"reward source {source_name!r}: score for sample {i} is NaN")
        if math.isinf(v):
            raise RewardError(f"reward source {source_name!r}: score for sample {i} is {v}")
        out.append(v)
    return out


class RewardSource(ABC):
    """One batched reward: ``score(prompts, responses) -> list[float]``.

    Call the object (``reward(prompts, responses)``) to get checked scores.
    """

    name: str = "reward"

    @abstractmethod
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        ...

    def close(self) -> None:
        """Release models/memory. Safe to call twice."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise RewardError(f"reward source {self.name!r}: {len(prompts)} prompts but "
                              f"{len(responses)} responses")
        if not responses:
            return []
        return checked_scores(self.name, self.score(prompts, responses), len(responses))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class VaderReward(RewardSource):
    """VADER compound score of the response, mapped to [0, 1] as (c + 1) / 2."""

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise RewardError("lexicon:vader needs the 'vaderSentiment' package "
                              "(pip install vaderSentiment)") from e
        self.name = "lexicon:vader"
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, responses):
        return [(self._analyzer.polarity_scores(r)["compound"] + 1.0) / 2.0 for r in responses]


class FunctionReward(RewardSource):
    """A Python function ``fn(prompts, responses) -> sequence of floats``, or
    ``fn(prompts, responses, answers)`` when it takes a third parameter."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.fn = fn
        self.uses_answers = _takes_answers(fn)

    def score(self, prompts, responses, answers=None):
        if self.uses_answers:
            n = len(responses)
            return self.fn(list(prompts), list(responses), list(answers) if answers is not None else [None] * n)
        return self.fn(list(prompts), list(responses))


def _takes_answers(fn: Callable) -> bool:
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.name == "answers" for p in params)


class RuleReward(RewardSource):
    """``rule:<name>``: a rule that checks each response against its reference answer."""

    uses_answers = True

    def __init__(self, source: str):
        from engine.tasks import RULES

        rule = source.split(":", 1)[1]
        if rule not in RULES:
            raise RewardError(f"unknown rule reward {source!r}; rules: "
                              + ", ".join(f"rule:{r}" for r in RULES))
        self.name, self.rule = source, rule

    def judge(self, responses, answers=None) -> tuple[list[float], list[bool]]:
        """Scores and whether each response's answer is right."""
        from engine.tasks import judge

        return judge(self.rule, list(responses), answers)

    def score(self, prompts, responses, answers=None):
        return self.judge(responses, answers)[0]


def _load_function(source: str, spec: str) -> FunctionReward:
    if not _FUNC_RE.match(spec):
        raise RewardError(f"malformed python reward source {source!r}: expected "
                          f"python:pkg.module:function")
    module_name, attr = spec.split(":", 1)
    hint = "" if source.startswith("python:") else f" ({_accepted()})"
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # a reward module beside the config, as with `python -m`
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"reward source {source!r}: cannot import module {module_name!r}: "
                          f"{e}{hint}") from e
    except Exception as e:
        raise RewardError(f"reward source {source!r}: importing module {module_name!r} "
                          f"failed: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward source {source!r}: module {module_name!r} has no "
                              f"attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward source {source!r}: {attr!r} in {module_name!r} is not "
                          f"callable")
    return FunctionReward(source, obj)


class ClassifierReward(RewardSource):
    """A sequence-classification model scoring prompt+response (or the response)."""

    def __init__(
        self,
        name: str,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: Any = "float32",
        quantization: str = "none",
        score_label: Optional[int | str] = None,
        score_kind: str = "prob",
        max_length: int = 128,
        batch_size: int = 32,
        score_text: str = "prompt+response",
        progress: Optional[Progress] = None,
    ):
        if score_kind not in ("prob", "logit"):
            raise RewardError(f"score_kind must be 'prob' or 'logit', got {score_kind!r}")
        if score_text not in ("prompt+response", "response"):
            raise RewardError(f"score_text must be 'prompt+response' or 'response', got "
                              f"{score_text!r}")
        self.name = name
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.score_kind = score_kind
        self.score_text = score_text
        self.metadata = _read_metadata(model_path)
        self.model, self.tokenizer = self._load(model_path, dtype, quantization, device, progress)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        config = self.model.config
        self.num_labels = int(getattr(config, "num_labels", 1) or 1)
        if score_label is None:
            score_label = self.metadata.get("score_label", 1)
            if score_label is None:
                score_label = 1
        self.score_label = self._label_index(score_label, config)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is not None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            else:
                raise RewardError(f"reward model {name!r}: tokenizer has no pad token")
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = self.tokenizer.pad_token_id

    def _load(self, model_path: str, dtype: Any, quantization: str, device: Any,
              progress: Optional[Progress]):
        from . import models

        try:
            with quiet_transformers():
                return models.load_reward_model(
                    model_path, dtype=dtype, device=device,
                    quantization=quantization or "none", num_labels=None,
                    progress=progress or (lambda m: None))
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = "" if Path(model_path).exists() else f" ({_accepted()})"
            raise RewardError(f"could not load reward model {self.name!r} as a "
                              f"sequence-classification model: {msg}{hint}") from e

    def _label_index(self, score_label: int | str, config) -> int:
        if self.num_labels == 1:
            return 0
        if isinstance(score_label, str) and score_label.strip().lstrip("-").isdigit():
            score_label = int(score_label)
        if isinstance(score_label, str):
            raw = getattr(config, "label2id", None) or {}
            label2id = {str(k): int(v) for k, v in raw.items()}
            lowered = {k.lower(): v for k, v in label2id.items()}
            if score_label in label2id:
                return label2id[score_label]
            if score_label.lower() in lowered:
                return lowered[score_label.lower()]
            raise RewardError(f"reward model {self.name!r}: no label {score_label!r}; labels: "
                              f"{', '.join(label2id) or 'none'}")
        idx = int(score_label)
        if not -self.num_labels <= idx < self.num_labels:
            raise RewardError(f"reward model {self.name!r}: score_label {idx} out of range for "
                              f"{self.num_labels} labels")
        return idx % self.num_labels

    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        if self.score_text == "response":
            return list(responses)
        return [join_prompt_response(p, r) for p, r in zip(prompts, responses)]

    def score(self, prompts, responses):
        return self.score_and_embed(prompts, responses, embed=False)[0].tolist()

    def score_and_embed(self, prompts, responses, embed: bool = True):
        """``(scores [N], embeddings [N, H] or None)``: the scores, and with ``embed`` the mean of
        the last hidden layer over each text's tokens, from the same forward pass (the features
        of a preference head, engine/preference.py)."""
        import torch

        texts = self.texts(prompts, responses)
        vals_out, emb_out = [], []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                res = self.model(**enc, output_hidden_states=embed)
                logits = res.logits.float()
                if self.num_labels == 1:
                    vals = logits[:, 0]
                elif self.score_kind == "prob":
                    vals = torch.softmax(logits, dim=-1)[:, self.score_label]
                else:
                    vals = logits[:, self.score_label]
                vals_out.append(vals.cpu())
                if embed:
                    m = enc["attention_mask"].unsqueeze(-1).float()
                    h = res.hidden_states[-1].float()
                    emb_out.append(((h * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu())
        scores = torch.cat(vals_out) if vals_out else torch.zeros(0)
        return scores, (torch.cat(emb_out) if emb_out else None)

    def close(self):
        if getattr(self, "model", None) is not None:
            self.model = None
            gc.collect()


class PreferenceReward(RewardSource):
    """A base reward plus a judge's taste learned by a refit (``engine/preference.py``):
    ``base + w * z``, where ``z`` is the preference head's normalised output on the text."""

    def __init__(self, name: str, folder: str, build_kw: dict):
        import torch  # noqa: F401 - the head is a tensor

        from . import preference as pref

        self.name = name
        spec = pref.read(Path(folder).expanduser())
        self.spec = spec
        self.head = pref.Head.from_json(spec["head"])
        self.w = float(spec["w"])
        self.base = build_reward(spec["base_source"], **build_kw)
        self.encoder = None
        self.sentence = (pref.SentenceEncoder(str(getattr(self.base, "device", "cpu")), progress=build_kw.get("progress"))
                         if pref.needs_sentence(self.head.kind) else None)
        if pref.needs_encoder(self.head.kind):
            enc = spec.get("encoder_source") or spec["base_source"]
            if enc == spec["base_source"] and isinstance(self.base, ClassifierReward):
                self.encoder = self.base
            else:
                self.encoder = build_reward(enc, **build_kw)
                if not isinstance(self.encoder, ClassifierReward):
                    raise RewardError(f"preference head {folder}: its encoder {enc!r} is not a "
                                      f"sequence-classification model")

    def components(self, prompts, responses):
        """``(base scores, preference z)`` as float tensors of ``len(responses)``."""
        from . import preference as pref

        base, feats = pref.base_and_features(self.head.kind, self.base, self.encoder, self.sentence,
                                             prompts, responses)
        return base, self.head.z(feats)

    def combine(self, base, z):
        """The score from its two parts: ``base + w * z``."""
        from .preference import combined

        return combined(base, z, self.w)

    def score(self, prompts, responses):
        base, z = self.components(prompts, responses)
        return self.combine(base, z).tolist()

    def close(self):
        for s in (self.base, self.encoder, self.sentence):
            if s is not None:
                s.close()


def _read_metadata(model_path: str) -> dict:
    p = Path(model_path) / REWARD_METADATA
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def build_reward(
    source: str,
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    quantization: str = "none",
    score_label: Optional[int | str] = None,
    score_kind: str = "prob",
    max_length: int = 128,
    batch_size: int = 32,
    progress: Optional[Progress] = None,
    score_text: str = "prompt+response",
) -> RewardSource:
    """Build a reward source from its source string (see module docstring).

    ``score_label``: label index or name (looked up in ``config.label2id``) whose probability
    or logit is the reward; ``None`` = the ``score_label`` recorded in the folder's
    ``rlhf_reward.json`` (models trained by ``train-rm``), else 1 (the positive class of a
    binary sentiment classifier). Ignored for single-output models.
    """
    if not isinstance(source, str) or not source.strip():
        raise RewardError(f"empty reward source; {_accepted()}")
    source = source.strip()
    classifier_kw = dict(device=device, dtype=dtype, quantization=quantization,
                         score_label=score_label, score_kind=score_kind, max_length=max_length,
                         batch_size=batch_size, score_text=score_text, progress=progress)

    if source.startswith("lexicon:"):
        if source == "lexicon:vader":
            return VaderReward()
        raise RewardError(f"unknown lexicon reward {source!r}; {_accepted()}")
    if source.startswith("python:"):
        return _load_function(source, source[len("python:"):])
    if source.startswith("rule:"):
        return RuleReward(source)
    if source.startswith("bundled:"):
        if source == "bundled:minilm-sentiment":
            from .reward_training import ensure_default_sentiment_rm

            path = ensure_default_sentiment_rm(progress)
            return ClassifierReward(source, str(path), **classifier_kw)
        raise RewardError(f"unknown bundled reward {source!r}; {_accepted()}")

    path = Path(source).expanduser()
    if path.is_dir() and (path / "preference.json").is_file():
        return PreferenceReward(source, str(path), dict(classifier_kw, progress=progress))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise RewardError(f"reward source {source!r} is not a model folder (needs "
                              f"config.json); {_accepted()}")
        return ClassifierReward(source, str(path), **classifier_kw)
    if _FUNC_RE.match(source):
        return _load_function(source, source)
    if source.startswith(("/", ".", "~")) or "\\" in source:
        raise RewardError(f"reward model folder {source!r} does not exist")
    if _HUB_ID_RE.match(source):
        return ClassifierReward(source, source, **classifier_kw)
    raise RewardError(f"malformed reward source {source!r}; {_accepted()}")
