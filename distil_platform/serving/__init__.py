"""Serving: the vLLM server a student or baseline runs behind (server) and its load test (loadtest, guidellm)."""
