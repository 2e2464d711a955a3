"""What a classifier reward model scores and what its folder holds, shared by engine/rewards.py
(which loads such a folder and scores with it) and engine/reward_training.py (which trains one
and writes the folder): the text scored for a (prompt, response), the metadata file's name, and
a quiet context for transformers while one loads. Below both; imports neither."""
from __future__ import annotations

import contextlib

REWARD_METADATA = "rlhf_reward.json"


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' info logs and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def join_prompt_response(prompt: str, response: str) -> str:
    """The text a classifier reward scores: prompt and response as one string (a space is
    inserted only if neither side already has whitespace at the seam)."""
    if not prompt:
        return response
    if not response:
        return prompt
    if prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return prompt + " " + response
