"""The ScipionCloud on-instance agent: GPU and host reporting, volumes, desktop, idle detection."""

__version__ = "0.1.0"
