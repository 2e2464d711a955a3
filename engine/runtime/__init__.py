"""The local runtime: role workers, the supervisor (single PPO controller), the run directory
and the control socket. ``engine.client`` is the public way in."""
