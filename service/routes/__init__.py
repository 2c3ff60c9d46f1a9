"""HTTP routes: the REST API (``api_*``) and the server-rendered pages."""
