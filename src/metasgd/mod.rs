//! Training: `train` (meta-training any update rule, MAML, Reptile) and
//! `pretrain` (the supervised Omniglot body), both through one run loop
//! (`run`: schedule, Adam in `optim`, log, `curves`, checkpoints). Imports go
//! one way: this module uses `tasks`, `eval` and `model`, and nothing of
//! serving reaches here. Adaptation itself, which serving shares, is
//! `model::adapt`.

pub mod config;
pub mod curves;
pub mod init;
pub mod meta;
pub mod optim;
pub mod pretrain;
pub mod run;
pub mod train;

pub use crate::model::adapt::{adapt, Adapted, Support};
pub use meta::{meta_loss, meta_loss_with, Order};
