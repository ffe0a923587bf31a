//! metasgd: meta-trained models adapted to new tasks from a few examples,
//! served over HTTP.
//!
//! Data flows one way: HTTP (`server`) → validation → sessions and
//! adaptation (`metasgd::adapt`) → the model's forward function (`model`)
//! → candle tensors. Meta-training (`metasgd::train`, `tasks`, `eval`) is
//! reached only from the CLI.

pub mod bench;
pub mod device;
pub mod encoder;
pub mod eval;
pub mod fetch;
pub mod images;
pub mod metasgd;
pub mod model;
pub mod server;
pub mod tasks;
