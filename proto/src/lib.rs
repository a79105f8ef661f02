//! The CSI protocol, spec v1.12, as tonic clients and servers.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

pub use v1::*;
