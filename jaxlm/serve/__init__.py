"""`jaxlm serve`: an OpenAI-compatible HTTP server with continuous batching.

`schema` validates OpenAI's requests, `app` answers the routes (FastAPI), `scheduler` runs the
batch on one thread (requests join and leave between decode calls), `engine` holds the compiled
programs and the batch KV cache, `metrics` the Prometheus counters, `cli` the command.
"""
