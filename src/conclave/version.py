"""The version of Conclave, in one place (``conclave --version``, Maintenance.Status, /version)."""

__version__ = "0.1.0"
