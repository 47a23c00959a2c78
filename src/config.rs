//! The client's files: defaults.toml, local-secrets.toml and `<db>-sqlrsync`.
