"""HTTP routes, one module per resource: parse, authorise, call a service, return a model."""
