"""The processes: the router, the worker and the web server."""
