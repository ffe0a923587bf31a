//! Meta-training (Meta-SGD and MAML) and its episodes. Adaptation itself,
//! which serving shares, is `model::adapt`; nothing here is reachable from
//! the server.

pub mod adam;
pub mod meta;
pub mod pretrain;
pub mod train;

pub use crate::model::adapt::{adapt, Adapted, Support};
pub use meta::{meta_loss, meta_loss_with, Episode, Order};
