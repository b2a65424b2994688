"""Serving: a model server for a student or baseline (server; its launch, hardware and memory), its
load test (loadtest, guidellm_cli) and the analysis of the load test (throughput)."""
