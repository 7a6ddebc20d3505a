"""Metrics with bootstrap confidence intervals, calibration error, and reports."""
