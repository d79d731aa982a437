//! The OpenAPI 3.1 document of the HTTP API: `docs/openapi.json`, embedded
//! and served at `/api/v1/openapi.json`.

/// The document, as written in `docs/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");
