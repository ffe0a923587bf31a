//! The server's state: the core, the API keys, readiness and the drain
//! deadline. Handlers take it whole; the auth middleware takes only its
//! [`Auth`] part (`FromRef`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;

use super::auth::Auth;
use crate::infer::Core;

#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub auth: Auth,
    ready: Arc<AtomicBool>,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl AppState {
    pub fn new(core: Core, auth: Auth, drain_timeout: Duration) -> Self {
        Self {
            core: Arc::new(core),
            auth,
            ready: Arc::new(AtomicBool::new(false)),
            drain_timeout,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst)
    }
}

impl FromRef<AppState> for Auth {
    fn from_ref(s: &AppState) -> Auth {
        s.auth.clone()
    }
}
