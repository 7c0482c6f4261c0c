"""Serving on Databricks: optimization info, provisioned-throughput values, endpoints, queries, cleanup."""
