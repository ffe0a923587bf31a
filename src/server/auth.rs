//! API keys: loading them, checking a request's Bearer token in constant
//! time, and tagging the request with its owner (the key's id).
//!
//! A key is never logged or stored: sessions record the key id, the first
//! 16 hex digits of the key's SHA-256. `/health`, `/ready` and
//! `/openapi.yaml` are public, and `/metrics` too unless
//! `--protect-metrics`.

use std::path::Path;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::AppError;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Who a request acts for: the key id, or "" when auth is off.
#[derive(Clone, Debug, Default)]
pub struct Owner(pub String);

pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    ids: Vec<String>,
    pub protect_metrics: bool,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The public id of a key: 16 hex digits of its SHA-256.
pub fn key_id(key: &str) -> String {
    hex::encode(&digest(key)[..8])
}

impl ApiKeys {
    /// Keys from `file` (one per line; blank lines and `#` comments
    /// skipped) and from `keys`. `None` when there are none: auth is off.
    pub fn load(file: Option<&Path>, keys: &[String], protect_metrics: bool) -> anyhow::Result<Option<Self>> {
        let mut all: Vec<String> = keys
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(f) = file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading the API keys file {}", f.display()))?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if all.is_empty() {
            anyhow::ensure!(
                !protect_metrics,
                "--protect-metrics needs API keys (--api-keys-file or METASGD_API_KEYS)"
            );
            return Ok(None);
        }
        for (i, k) in all.iter().enumerate() {
            anyhow::ensure!(
                k.len() >= MIN_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()),
                "API key #{} (id {}) must be at least {MIN_KEY_LEN} printable characters without spaces",
                i + 1,
                key_id(k)
            );
        }
        all.sort();
        all.dedup();
        Ok(Some(Self {
            digests: all.iter().map(|k| digest(k)).collect(),
            ids: all.iter().map(|k| key_id(k)).collect(),
            protect_metrics,
        }))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of the key `token` is, comparing against every key in
    /// constant time (no early exit, no data-dependent branch).
    pub fn check(&self, token: &str) -> Option<&str> {
        let d = digest(token);
        let mut found = 0u32;
        let mut index = 0u32;
        for (i, k) in self.digests.iter().enumerate() {
            let eq = d.ct_eq(k);
            index.conditional_assign(&(i as u32), eq);
            found.conditional_assign(&1, eq);
        }
        (found == 1).then(|| self.ids[index as usize].as_str())
    }
}

fn is_public(path: &str, protect_metrics: bool) -> bool {
    matches!(path, "/health" | "/ready" | "/openapi.yaml") || (path == "/metrics" && !protect_metrics)
}

fn unauthorized(message: &str) -> Response {
    super::metrics::auth_failure();
    let mut r = AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The auth middleware's state: the keys, or `None` when auth is off. A
/// sub-state of the app's (`FromRef`), so auth needs nothing else of it.
#[derive(Clone, Default)]
pub struct Auth(pub Option<std::sync::Arc<ApiKeys>>);

/// Middleware: checks the Bearer token where one is needed and puts the
/// request's [`Owner`] in its extensions.
pub async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let owner = match &auth.0 {
        None => Owner::default(),
        Some(keys) if is_public(req.uri().path(), keys.protect_metrics) => Owner::default(),
        Some(keys) => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            let Some(token) = token else {
                return unauthorized("send an API key as `Authorization: Bearer <key>`");
            };
            match keys.check(token.trim()) {
                Some(id) => Owner(id.to_owned()),
                None => return unauthorized("the API key is not valid"),
            }
        }
    };
    req.extensions_mut().insert(owner);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_give_their_id() {
        let keys = ApiKeys::load(
            None,
            &["alpha-key-0123456789".into(), "bravo-key-0123456789".into()],
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            keys.check("bravo-key-0123456789"),
            Some(key_id("bravo-key-0123456789").as_str())
        );
        assert_eq!(
            keys.check("alpha-key-0123456789"),
            Some(key_id("alpha-key-0123456789").as_str())
        );
        assert_eq!(keys.check("alpha-key-012345678"), None);
        assert_eq!(keys.check(""), None);
        assert_eq!(key_id("x").len(), 16);
    }

    #[test]
    fn a_keys_file_skips_comments_and_short_keys_are_refused() {
        let f = std::env::temp_dir().join(format!("metasgd-keys-{}", std::process::id()));
        std::fs::write(&f, "# team a\n\n  charlie-key-0123456789  \n").unwrap();
        let keys = ApiKeys::load(Some(&f), &[], true).unwrap().unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.check("charlie-key-0123456789").is_some());
        let e = ApiKeys::load(None, &["short".into()], false).err().unwrap().to_string();
        assert!(e.contains("at least 16") && !e.contains("short"), "{e}");
        assert!(ApiKeys::load(None, &[], false).unwrap().is_none());
        assert!(ApiKeys::load(None, &[], true).is_err());
        std::fs::remove_file(f).unwrap();
    }
}
