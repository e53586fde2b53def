"""Metrics, the results-table runner and figures."""
