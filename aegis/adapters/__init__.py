"""Executors: adapters that carry out allowed actions."""
