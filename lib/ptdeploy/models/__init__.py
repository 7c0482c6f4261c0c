"""Models: their sources, MLflow logging, the registry, Unity Catalog and system.ai, smoke tests of a registered model."""
