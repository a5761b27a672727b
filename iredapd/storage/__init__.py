"""The iredapd and amavisd databases: schema, engines, and one module per feature."""
