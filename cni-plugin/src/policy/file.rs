//! The policy file: node-local JSON, or a mounted ConfigMap with the same format.

use std::path::{Path, PathBuf};

use super::model::{Policy, Project};
use crate::durable::save_json;

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {path} is invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write policy {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Load the policy; before the first change it is the config's defaults.
pub fn load(path: &Path, default_global: &[Project]) -> Result<Policy, PolicyFileError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<Policy>(&b)
            .map(Policy::normalised)
            .map_err(|source| PolicyFileError::Parse {
                path: path.into(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Policy::with_global(default_global.iter().cloned()))
        }
        Err(source) => Err(PolicyFileError::Read {
            path: path.into(),
            source,
        }),
    }
}

pub fn save(path: &Path, policy: &Policy) -> Result<(), PolicyFileError> {
    save_json(path, &policy).map_err(|source| PolicyFileError::Write {
        path: path.into(),
        source,
    })
}
