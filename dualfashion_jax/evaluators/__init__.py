"""Recommendation metrics for PFITB / GOR results: results-record format, evaluator networks, metric registry, CLI."""
