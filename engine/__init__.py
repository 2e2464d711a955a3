"""rlhf-console engine: everything that trains. Never imports console."""
