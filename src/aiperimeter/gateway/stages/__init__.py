"""One stage per module; `gateway.app.build_pipeline` puts them in order."""
