//! Controller service handlers.

use moat_csi_proto as csi;
use moat_csi_proto::controller_server::Controller;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{self, capabilities, capacity, max_entries, required_capability};
use super::{require, source_key, Ctx, Hold};
use crate::ops::controller::{self as ops, CreateArgs};
use crate::ops::{page, snapshot, DriverError};
use crate::volume::{ids, Source};

pub struct ControllerService(pub Ctx);

type R<T> = Result<Response<T>, Status>;

fn rpc(t: csi::controller_service_capability::rpc::Type) -> csi::ControllerServiceCapability {
    use csi::controller_service_capability::{Rpc, Type};
    csi::ControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> R<csi::CreateVolumeResponse> {
        let r = req.into_inner();
        require(!r.name.is_empty(), "name")?;
        if !ids::valid_name(&r.name) {
            return Err(Status::invalid_argument(
                "name has banned characters or is too long",
            ));
        }
        let caps = capabilities(&r.volume_capabilities)?;
        let (required, limit) = capacity(&r.capacity_range)?;
        let args = CreateArgs {
            source: convert::content_source(&r.volume_content_source)?,
            params: r.parameters.into_iter().collect(),
            name: r.name,
            required,
            limit,
            caps,
        };
        let mut holds = vec![(ids::derive("vol", &args.name), Hold::Exclusive)];
        if let Some(Source::Volume(id) | Source::Snapshot(id)) = &args.source {
            holds.push((source_key(id), Hold::Shared));
        }
        let v = self
            .0
            .run_holding(&holds, move |d| ops::create(d, args))
            .await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(convert::volume(&v)),
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> R<csi::DeleteVolumeResponse> {
        let id = req.into_inner().volume_id;
        require(!id.is_empty(), "volume_id")?;
        self.0
            .run_holding(&deleting(&id), move |d| ops::delete(d, &id))
            .await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, node_id = %req.get_ref().node_id))]
    async fn controller_publish_volume(
        &self,
        req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> R<csi::ControllerPublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        require(!r.node_id.is_empty(), "node_id")?;
        let cap = required_capability(&r.volume_capability)?;
        let (id, node, ro) = (r.volume_id, r.node_id, r.readonly);
        let readonly = self
            .0
            .run(&id.clone(), move |d| ops::publish(d, &id, &node, &cap, ro))
            .await?;
        let ctx = [("readonly".to_string(), readonly.to_string())].into();
        Ok(Response::new(csi::ControllerPublishVolumeResponse {
            publish_context: ctx,
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, node_id = %req.get_ref().node_id))]
    async fn controller_unpublish_volume(
        &self,
        req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> R<csi::ControllerUnpublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        let (id, node) = (r.volume_id, r.node_id);
        self.0
            .run(&id.clone(), move |d| ops::unpublish(d, &id, &node))
            .await?;
        Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> R<csi::ValidateVolumeCapabilitiesResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        let caps = capabilities(&r.volume_capabilities)?;
        let id = r.volume_id.clone();
        let missing = self
            .0
            .run(&id.clone(), move |d| {
                Ok(ops::unsupported(&ops::ready_volume(d, &id)?, &caps))
            })
            .await?;
        let resp = if missing.is_empty() {
            csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            }
        } else {
            csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: format!("not supported by this volume: {}", missing.join(", ")),
            }
        };
        Ok(Response::new(resp))
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> R<csi::ListVolumesResponse> {
        use csi::list_volumes_response::{Entry, VolumeStatus};
        let r = req.into_inner();
        let max = max_entries(r.max_entries)?;
        let token = r.starting_token;
        if !token.is_empty() && !ids::is_valid("vol", &token) {
            return Err(Status::aborted(format!(
                "starting_token {token} is not one this driver gave"
            )));
        }
        let d = self.0.driver.clone();
        let (vols, next) = tokio::task::spawn_blocking(move || -> Result<_, DriverError> {
            let ready = d
                .store
                .volumes()?
                .into_iter()
                .filter(|v| v.state == crate::volume::VolumeState::Ready)
                .collect();
            Ok(page(ready, |v| v.id.as_str(), &token, max))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let entries = vols
            .iter()
            .map(|v| Entry {
                volume: Some(convert::volume(v)),
                status: Some(VolumeStatus {
                    published_node_ids: v.published.keys().cloned().collect(),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse {
            entries,
            next_token: next,
        }))
    }

    async fn get_capacity(
        &self,
        _: Request<csi::GetCapacityRequest>,
    ) -> R<csi::GetCapacityResponse> {
        let d = self.0.driver.clone();
        let available = tokio::task::spawn_blocking(move || d.pool.available())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::from(DriverError::from(e)))?;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(available as i64),
            minimum_volume_size: Some(crate::ops::MIB as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> R<csi::ControllerGetCapabilitiesResponse> {
        use csi::controller_service_capability::rpc::Type::*;
        let all = [
            CreateDeleteVolume,
            PublishUnpublishVolume,
            ListVolumes,
            GetCapacity,
            CreateDeleteSnapshot,
            ListSnapshots,
            CloneVolume,
            PublishReadonly,
            ExpandVolume,
            ListVolumesPublishedNodes,
            GetVolume,
            SingleNodeMultiWriter,
        ];
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: all.into_iter().map(rpc).collect(),
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().source_volume_id, name = %req.get_ref().name))]
    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> R<csi::CreateSnapshotResponse> {
        let r = req.into_inner();
        require(!r.source_volume_id.is_empty(), "source_volume_id")?;
        require(!r.name.is_empty(), "name")?;
        if !ids::valid_name(&r.name) {
            return Err(Status::invalid_argument(
                "name has banned characters or is too long",
            ));
        }
        let holds = [
            (ids::derive("snap", &r.name), Hold::Exclusive),
            (source_key(&r.source_volume_id), Hold::Shared),
        ];
        let s = self
            .0
            .run_holding(&holds, move |d| {
                snapshot::create(d, &r.source_volume_id, &r.name)
            })
            .await?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(convert::snapshot(&s)),
        }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> R<csi::DeleteSnapshotResponse> {
        let id = req.into_inner().snapshot_id;
        require(!id.is_empty(), "snapshot_id")?;
        self.0
            .run_holding(&deleting(&id), move |d| snapshot::delete(d, &id))
            .await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> R<csi::ListSnapshotsResponse> {
        let r = req.into_inner();
        let max = max_entries(r.max_entries)?;
        let d = self.0.driver.clone();
        let (snaps, next) = tokio::task::spawn_blocking(move || {
            snapshot::list(
                &d,
                &r.starting_token,
                max,
                &r.source_volume_id,
                &r.snapshot_id,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let entries = snaps
            .iter()
            .map(|s| csi::list_snapshots_response::Entry {
                snapshot: Some(convert::snapshot(s)),
            })
            .collect();
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries,
            next_token: next,
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> R<csi::ControllerExpandVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        require(r.capacity_range.is_some(), "capacity_range")?;
        let (required, limit) = capacity(&r.capacity_range)?;
        let id = r.volume_id;
        let (cap, node) = self
            .0
            .run(&id.clone(), move |d| ops::expand(d, &id, required, limit))
            .await?;
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: cap as i64,
            node_expansion_required: node,
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<csi::ControllerGetVolumeRequest>,
    ) -> R<csi::ControllerGetVolumeResponse> {
        use csi::controller_get_volume_response::VolumeStatus;
        let id = req.into_inner().volume_id;
        require(!id.is_empty(), "volume_id")?;
        let v = self
            .0
            .run(&id.clone(), move |d| ops::ready_volume(d, &id))
            .await?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(convert::volume(&v)),
            status: Some(VolumeStatus {
                published_node_ids: v.published.keys().cloned().collect(),
                volume_condition: None,
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> R<csi::ControllerModifyVolumeResponse> {
        Err(Status::unimplemented(
            "MODIFY_VOLUME is not advertised: volumes have no mutable parameters",
        ))
    }
}

/// A delete holds the id and, against copies still reading it, its source key.
fn deleting(id: &str) -> [(String, Hold); 2] {
    [
        (id.to_string(), Hold::Exclusive),
        (source_key(id), Hold::Exclusive),
    ]
}
