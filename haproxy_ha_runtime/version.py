"""The haproxy-ha release this code belongs to.  A node reports it (its status object, its state
record, GET /state) beside the document schema it reads (config.SCHEMA_VERSION); pyproject.toml
reads the package's version from here.  A released version is recorded in releases/index.json.
"""

__version__ = "0.2.0.dev0"
