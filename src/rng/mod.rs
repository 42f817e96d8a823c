//! Random numbers: PyTorch's CPU generator reproduced bit for bit ([`TorchGenerator`]), so the same
//! seeds give the same splits, minibatch orders and initial weights as the notebooks, and the older
//! ChaCha streams, kept so runs made with them resume identically.

mod cephes;
pub mod torch;

use serde::{Deserialize, Serialize};

pub use torch::TorchGenerator;

/// Which generator draws a run's split, initial weights and minibatch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RngKind {
    /// PyTorch's: `torch.manual_seed(seed)` then the calls the reference notebooks make.
    Torch,
    /// ChaCha8 streams (groklens before torch seeding; a config without `rng` means this).
    #[default]
    Chacha,
}
