"""Capacity: the planner, cost, load tests, their plots and the verdict (measured against planned)."""
