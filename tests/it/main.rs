//! The integration tests, as one binary (one link of candle, ort, axum and
//! redis instead of one per file). `tests/gradcheck.rs` stays apart: it sets
//! `CANDLE_GRAD_DO_NOT_DETACH`, which is process-wide.

mod common;

mod admission;
mod api;
mod auth;
mod batching;
mod concurrency;
mod connections;
mod encoder;
mod errors;
mod fetch;
mod hwu64;
mod images_api;
mod layout;
mod omniglot;
mod quality;
mod reference;
mod replicas;
mod rules;
mod signals;
mod spec;
mod startup;
mod stores;
mod text_api;
