"""Signed webhooks: the destinations a workload's job results go to (``service``), the SSRF
rules their URLs pass at save and at every delivery (``urls``), the bytes sent (``payload``), one
HTTP attempt (``sender``) and the loop that delivers, retries and records (``deliverer``)."""
