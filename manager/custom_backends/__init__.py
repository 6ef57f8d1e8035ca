"""The custom-backend registry: a tenant's own backends, published as packages.

`upload` reads a publish request (multipart, streamed to disk with a size cap), `service` checks
the package's manifest (read statically by `inferencekey.backend.read_manifest_from_archive`,
never imported), stores the version and its bytes, and answers the listings, the delete and the
agents' downloads; `wire` holds the shapes the routes answer with
(`manager/api/custom_backends.py`).
"""
