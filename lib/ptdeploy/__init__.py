"""ptdeploy: take foundation models to provisioned-throughput serving endpoints.

The notebooks under ``notebooks/`` are thin; the logic lives in the modules of this
package, one concern each (see README.md for the map).
"""

__version__ = "0.1.0"
