"""Campaigns: segments, test on a small group, automatic decision and rollout, variants that learn."""
