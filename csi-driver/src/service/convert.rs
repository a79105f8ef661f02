//! Proto ↔ typed values, parsed once at the edge.

use moat_csi_proto as csi;
use tonic::Status;

use crate::volume::access::Capability;
use crate::volume::{AccessMode, Snapshot, Source, Volume};

pub fn capability(c: &csi::VolumeCapability) -> Result<Capability, Status> {
    use csi::volume_capability::AccessType;
    let mode = c
        .access_mode
        .as_ref()
        .and_then(|m| AccessMode::from_proto(m.mode))
        .ok_or_else(|| Status::invalid_argument("volume_capability.access_mode is required"))?;
    match &c.access_type {
        Some(AccessType::Block(_)) => Ok(Capability {
            mode,
            block: true,
            fs_type: None,
        }),
        Some(AccessType::Mount(m)) => Ok(Capability {
            mode,
            block: false,
            fs_type: Some(m.fs_type.clone()).filter(|f| !f.is_empty()),
        }),
        None => Err(Status::invalid_argument(
            "volume_capability.access_type is required",
        )),
    }
}

pub fn capabilities(caps: &[csi::VolumeCapability]) -> Result<Vec<Capability>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    caps.iter().map(capability).collect()
}

pub fn required_capability(c: &Option<csi::VolumeCapability>) -> Result<Capability, Status> {
    capability(
        c.as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?,
    )
}

pub fn content_source(s: &Option<csi::VolumeContentSource>) -> Result<Option<Source>, Status> {
    use csi::volume_content_source::Type;
    match s.as_ref().map(|s| &s.r#type) {
        None => Ok(None),
        Some(Some(Type::Snapshot(s))) if !s.snapshot_id.is_empty() => {
            Ok(Some(Source::Snapshot(s.snapshot_id.clone())))
        }
        Some(Some(Type::Volume(v))) if !v.volume_id.is_empty() => {
            Ok(Some(Source::Volume(v.volume_id.clone())))
        }
        Some(_) => Err(Status::invalid_argument(
            "volume_content_source needs a snapshot_id or volume_id",
        )),
    }
}

fn source_proto(s: &Source) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let t = match s {
        Source::Snapshot(id) => Type::Snapshot(SnapshotSource {
            snapshot_id: id.clone(),
        }),
        Source::Volume(id) => Type::Volume(VolumeSource {
            volume_id: id.clone(),
        }),
    };
    csi::VolumeContentSource { r#type: Some(t) }
}

/// The wire volume. The context is informational: the driver never trusts it
/// back (ownership lives in its own records).
pub fn volume(v: &Volume) -> csi::Volume {
    let mut ctx = std::collections::HashMap::new();
    ctx.insert(
        "moat.dev/kind".to_string(),
        format!("{:?}", v.kind).to_lowercase(),
    );
    if let Some(fs) = &v.fs_type {
        ctx.insert("moat.dev/fs-type".into(), fs.clone());
    }
    csi::Volume {
        capacity_bytes: v.capacity as i64,
        volume_id: v.id.clone(),
        volume_context: ctx,
        content_source: v.source.as_ref().map(source_proto),
        accessible_topology: vec![],
    }
}

pub fn snapshot(s: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (s.created_unix_nanos / 1_000_000_000) as i64,
            nanos: (s.created_unix_nanos % 1_000_000_000) as i32,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    }
}

pub fn capacity(r: &Option<csi::CapacityRange>) -> Result<(u64, u64), Status> {
    let Some(r) = r else {
        return Ok((0, 0));
    };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range must not be negative",
        ));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Status::out_of_range("required_bytes exceeds limit_bytes"));
    }
    Ok((r.required_bytes as u64, r.limit_bytes as u64))
}

pub fn max_entries(n: i32) -> Result<usize, Status> {
    usize::try_from(n).map_err(|_| Status::invalid_argument("max_entries must not be negative"))
}
