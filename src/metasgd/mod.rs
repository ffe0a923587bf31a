//! Meta-SGD: adaptation for serving, and meta-training (Meta-SGD and MAML).
//!
//! The serving path uses only [`adapt`]; the rest is reached from `train` and
//! `eval`, never from the server.

pub mod adam;
pub mod adapt;
pub mod meta;
pub mod pretrain;
pub mod train;

pub use adapt::{adapt, Adapted, Support};
pub use meta::{meta_loss, Episode, Order};
