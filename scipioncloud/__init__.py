"""ScipionCloud operator's CLI: bake images, run instances and volumes, estimate costs."""

__version__ = "0.1.0"
