"""Locust load tests. Talks HTTP only and imports nothing of the project."""
