"""The HTTP events API (`rassylka api`): JSON in, the same Avro records on the same topics
as a direct publish out, answered only once the broker has stored them.

One module per concern:

* `settings` — the API's limits, from the environment;
* `bodies` — pure: a request body to the records it publishes, or every problem with its path;
* `keys` — API keys per client, hashed at rest on the compacted topic `api.keys`;
* `idempotency` — first answers per `Idempotency-Key` on the compacted topic `api.answers`;
* `table` — a compacted topic mirrored into memory (read at start, then tailed);
* `publisher` — an idempotent producer (acks=all) whose acknowledgements can be awaited;
* `lag` — the router's consumer lag, watched for backpressure (429);
* `openapi` — the OpenAPI document, generated from `schemas/*.avsc`;
* `app` — the aiohttp application and `rassylka api`.
"""
