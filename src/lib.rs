//! metasgd: meta-trained models adapted to new tasks from a few examples,
//! served over HTTP.
//!
//! Data flows one way: HTTP (`server`) → the core (`infer`: admission,
//! decoding, sessions, engine) → the model's pure functions (`model`) →
//! candle tensors. Meta-training (`metasgd`, `tasks`, `eval`) is reached
//! only from the CLI, never from `server` or `infer`.

pub mod alloc;
pub mod bench;
pub mod device;
pub mod encoder;
pub mod eval;
pub mod fetch;
pub mod images;
pub mod infer;
pub mod metasgd;
pub mod model;
pub mod server;
pub mod tasks;
