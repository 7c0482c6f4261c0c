"""The local workspace: an offline stand-in for a Databricks workspace's serving API.

A FastAPI app on 127.0.0.1 that answers the subset of the REST API the deployment flow
uses, as Databricks does (shapes, states, error codes), backed by the local MLflow
registry and a real inference engine (one worker process per served entity).
"""
