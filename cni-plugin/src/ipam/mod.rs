//! Node-local IPAM: pure allocation over a persistent store.

pub mod allocator;
pub mod disk;
#[cfg(test)]
pub mod fake;
pub mod store;

pub use allocator::{allocate, allocate_probing, free_count, AllocError};
pub use disk::DiskStore;
pub use store::{Attachment, AttachmentKey, IpStore, StoreError};
