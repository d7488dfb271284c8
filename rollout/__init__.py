"""Streaming rollouts: episode layout, chunking, vLLM rollout workers."""
