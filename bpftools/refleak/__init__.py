"""Incident 2's wing: what refleak plans, captures, and where it finds devices and inlined sites."""
