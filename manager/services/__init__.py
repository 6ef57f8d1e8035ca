"""Business rules, callable without HTTP. Routes parse, authorise, call one of these."""
