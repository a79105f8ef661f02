//! The CNI spec at Moat's edge: environment, configuration, results, errors.

pub mod args;
pub mod conf;
pub mod error;
pub mod invocation;
pub mod range;
pub mod result;
pub mod version;

pub use conf::{AttachmentRef, IsolationConf, NetConf};
pub use error::{CniError, Code};
pub use invocation::{Command, Invocation};
pub use version::Version;
