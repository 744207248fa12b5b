"""`csm-router demo`: the real router and worker on embedded servers."""
