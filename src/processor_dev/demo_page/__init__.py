"""The race-control page of `processor demo` (development tooling, never the runtime).

- `standin`: a development-only Directus stand-in (one-time demo tokens -> session cookies)
  that the demo's live server authenticates against.
- `pages`: the HTTP server of the page: the static files in `static/` (HTML + plain JS + CSS,
  no build step, nothing fetched from the network), `/scenario.json` (the stage geometry, which a
  real SPA reads from Directus REST) and `/results.json` (stage_results, the fallback used until
  the live server sends `results` frames).

The runtime layers never import this package (an import-linter contract in pyproject.toml), so a
production image cannot be talked into trusting the stand-in.
"""

DEFAULT_PORT = 8088  # the page's port on 127.0.0.1 (`processor demo --page-port`)
