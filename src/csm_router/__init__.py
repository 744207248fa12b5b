"""csm-router: routes a pooled Customer Success inbox to the right CSM."""

__version__ = "0.1.0"
