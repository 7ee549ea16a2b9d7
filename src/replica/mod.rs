//! Replication of VM disk images as verified replica points on the recovery host.
//!
//! An image is cut in fixed blocks of [`BLOCK`] bytes. Each block's hash is its BLAKE3
//! chaining value at its offset, so the whole-image BLAKE3 (the same as `b3sum`) is computed
//! from the block hashes alone ([`blocks`]). The recovery side keeps, next to its copy (the
//! mirror), a [`Manifest`] of those hashes (with the tree above them, updated in place), the list of [`Point`]s and one reverse delta per
//! older point ([`store`]): the mirror is the newest point, and an older point is the mirror
//! with the blocks its successors overwrote put back.
//!
//! The `reprise` binary runs on both hosts as a helper (`reprise helper …`, [`helper`]): the
//! source side reads its image and sends only the blocks whose hash differs from the recovery
//! manifest ([`wire`]), the recovery side applies them through a write-ahead journal and
//! commits the point only when the whole-image hash matches end to end. [`remote`] is the
//! orchestrator's side: it deploys the helper over SSH and pipes one side into the other.
//! [`protocol`] is the one definition of what they say to each other, and its version.
//!
//! Backup sets (folders) follow the same point model file by file ([`tree`]).
//!
//! This module never prints and never decides what to replicate: the runner and the command
//! line do.

pub mod batch;
pub mod beneath;
pub mod blocks;
pub mod busy;
pub mod cbt;
pub mod choice;
pub mod definitions;
pub mod helper;
pub mod image;
pub mod kept;
pub mod meta;
pub mod nbd;
pub mod nodes;
pub mod point;
pub mod protocol;
pub mod reads;
pub mod remote;
#[cfg(test)]
pub(crate) mod rewriter;
pub mod snapshot;
pub mod start;
pub mod store;
pub mod tree;
pub mod version;
pub mod window;
pub mod wire;

pub use blocks::{BLOCK, Manifest};
pub use meta::{CopyState, Lease, LeaseKind};
pub use remote::{ImageTransfer, ReplicaError};
pub use store::{Point, Store, StoreError, Verified};
