"""Reward: latency metrics, quality scorers, the fused SeqPO reward."""
