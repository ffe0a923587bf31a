//! `InferError`: every way the core refuses or fails a request. Each has a
//! kind (what sort of failure), a stable code (what clients branch on) and a
//! message that says what was wrong and the limit. The core knows no HTTP:
//! `server::error` maps each kind to a status, in one place.

/// What sort of failure: the server picks the status from this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request's content is wrong for the model (HTTP 422).
    Invalid,
    /// The request would cost more than a limit allows (413).
    TooLarge,
    /// No such model, session or route (404).
    NotFound,
    /// The session no longer matches the served model (409).
    Conflict,
    /// Too much in flight, in all or for this key, or a key at its session limit (429).
    Overloaded,
    /// Not ready, a timeout, or a store that does not answer (503).
    Unavailable,
    /// A failure of ours, not the client's (500): the message is logged, not sent.
    Internal,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InferError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

pub type Result<T, E = InferError> = std::result::Result<T, E>;

/// The text a cancellation carries through candle's error type (see
/// `pool::Cancel::check_tensor`).
pub const CANCELLED: &str = "metasgd: request cancelled";

impl InferError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, code, message)
    }
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::TooLarge, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }
    pub fn overloaded(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Overloaded, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, code, message)
    }
    pub fn internal(code: &'static str, err: impl std::fmt::Display) -> Self {
        Self::new(Kind::Internal, code, err.to_string())
    }
    /// The work stopped because its request timed out or its client left.
    pub fn cancelled() -> Self {
        Self::unavailable("cancelled", "the request was cancelled (timed out or the client left)")
    }
    pub fn is_cancelled(&self) -> bool {
        self.code == "cancelled"
    }
}

/// A tensor failure is ours. A cancellation raised inside a tensor loop
/// (see `pool::Cancel`) comes back as itself.
impl From<candle_core::Error> for InferError {
    fn from(e: candle_core::Error) -> Self {
        if e.to_string().contains(CANCELLED) {
            return Self::cancelled();
        }
        Self::internal("internal_error", e)
    }
}
