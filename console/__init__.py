"""rlhf-console: the Textual console and the command line."""
