"""Batch inference: ai_query over tables with Spark."""
