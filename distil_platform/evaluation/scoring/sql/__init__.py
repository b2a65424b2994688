"""Text2SQL scoring: extraction and execution match (matching), the SQLite sandbox untrusted SQL and
schemas run in (sandbox), schema introspection (schema), generated databases (database), result
comparison (results), and the distinguishing databases that separate a wrong query from the gold one
(suite, built from boundary, boundary_aggregates and editor edits; neighbours)."""
