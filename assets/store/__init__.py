"""The one storage layer: the home and its atomic writes (files), every table (lake), model
versions (models), pixel and embedding arrays (npy), DuckDB views (query) and the Dagster resource that names the home."""
