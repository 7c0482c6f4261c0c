"""The notebook surface: typed parameters and widgets, template specs, the steps the notebooks call, papermill runs, bundle jobs and their offline rehearsal, dbutils, JupyterLab."""
