//! Pods of other nodes ("peers"): their addresses and projects, so that a
//! connection a remote pod opens is judged by its tenant like a local one.
//! The node agent learns them from the Kubernetes API and syncs them here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::Project;
use crate::durable::save_json;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    pub project: Project,
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("cannot read peers {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("peers {path} are invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write peers {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parse a peer list: `[{"ip": "10.244.2.7", "project": "shop"}, …]`.
/// Duplicates collapse; one address with two projects keeps the first.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<Peer>, PeersError> {
    let mut peers: Vec<Peer> =
        serde_json::from_slice(bytes).map_err(|source| PeersError::Parse {
            path: path.into(),
            source,
        })?;
    let mut seen = std::collections::BTreeSet::new();
    peers.retain(|p| seen.insert(p.ip));
    peers.sort();
    Ok(peers)
}

/// The synced peers; none before the first sync.
pub fn load(path: &Path) -> Result<Vec<Peer>, PeersError> {
    match std::fs::read(path) {
        Ok(b) => parse(&b, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PeersError::Read {
            path: path.into(),
            source,
        }),
    }
}

pub fn save(path: &Path, peers: &[Peer]) -> Result<(), PeersError> {
    save_json(path, &peers).map_err(|source| PeersError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_validates_projects_and_keeps_one_project_per_address() {
        let p = Path::new("peers.json");
        let peers = parse(
            br#"[{"ip":"10.0.1.2","project":"b"},{"ip":"10.0.1.2","project":"c"},{"ip":"fd00::2","project":"a"}]"#,
            p,
        )
        .unwrap();
        let got: Vec<(String, &str)> = peers
            .iter()
            .map(|p| (p.ip.to_string(), p.project.as_str()))
            .collect();
        assert_eq!(
            got,
            [("10.0.1.2".to_string(), "b"), ("fd00::2".to_string(), "a")]
        );
        assert!(parse(br#"[{"ip":"10.0.1.2","project":"Not_A_Label"}]"#, p).is_err());
        assert!(parse(br#"[{"ip":"10.0.1","project":"a"}]"#, p).is_err());
    }
}
