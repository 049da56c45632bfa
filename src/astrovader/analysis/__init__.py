"""Metrics, figures and the report for trained models."""
