"""The jobs gateway: an OpenAI-style videos API and a web page in front of Triton's `mochi_stream`.

Its own process (`python -m gateway`, started beside tritonserver by `make serve`): it takes video jobs over
HTTP, keeps them in SQLite under a data directory, runs them through the server's gRPC stream, and serves
their progress, previews and finished files. No torch here: the gateway needs the validation rules
(mochi_runtime.validation), the Triton client (client/) and its web stack.
"""
