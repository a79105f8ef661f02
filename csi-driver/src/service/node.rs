//! Node service handlers.

use moat_csi_proto as csi;
use moat_csi_proto::node_server::Node;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::required_capability;
use super::{require, Ctx};
use crate::ops::node::{self as ops, PublishArgs, CTX_POD_NAMESPACE};
use crate::volume::ids;

pub struct NodeService(pub Ctx);

type R<T> = Result<Response<T>, Status>;

fn path(p: &str, what: &str) -> Result<(), Status> {
    require(!p.is_empty(), what)?;
    if ids::valid_path(p) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} must be an absolute path without .."
        )))
    }
}

fn usage(available: u64, total: u64, used: u64, unit: csi::volume_usage::Unit) -> csi::VolumeUsage {
    csi::VolumeUsage {
        available: available as i64,
        total: total as i64,
        used: used as i64,
        unit: unit as i32,
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> R<csi::NodeStageVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.staging_target_path, "staging_target_path")?;
        let cap = required_capability(&r.volume_capability)?;
        let (id, staging) = (r.volume_id, r.staging_target_path);
        self.0
            .run(&id.clone(), move |d| ops::stage(d, &id, &staging, &cap))
            .await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> R<csi::NodeUnstageVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.staging_target_path, "staging_target_path")?;
        let (id, staging) = (r.volume_id, r.staging_target_path);
        self.0
            .run(&id.clone(), move |d| ops::unstage(d, &id, &staging))
            .await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target_path = %req.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> R<csi::NodePublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.target_path, "target_path")?;
        path(&r.staging_target_path, "staging_target_path")?;
        let cap = required_capability(&r.volume_capability)?;
        let id = r.volume_id.clone();
        self.0
            .run(&id, move |d| {
                ops::publish(
                    d,
                    &PublishArgs {
                        id: &r.volume_id,
                        staging: &r.staging_target_path,
                        target: &r.target_path,
                        cap: &cap,
                        readonly: r.readonly,
                        pod_namespace: r.volume_context.get(CTX_POD_NAMESPACE).map(String::as_str),
                    },
                )
            })
            .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target_path = %req.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> R<csi::NodeUnpublishVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.target_path, "target_path")?;
        let (id, target) = (r.volume_id, r.target_path);
        self.0
            .run(&id.clone(), move |d| ops::unpublish(d, &id, &target))
            .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> R<csi::NodeGetVolumeStatsResponse> {
        use csi::volume_usage::Unit;
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.volume_path, "volume_path")?;
        let d = self.0.driver.clone();
        let (b, i) =
            tokio::task::spawn_blocking(move || ops::stats(&d, &r.volume_id, &r.volume_path))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        let mut out = vec![usage(b[0], b[1], b[2], Unit::Bytes)];
        if i[1] > 0 || i[2] > 0 {
            out.push(usage(i[0], i[1], i[2], Unit::Inodes));
        }
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage: out,
            volume_condition: None,
        }))
    }

    #[instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> R<csi::NodeExpandVolumeResponse> {
        let r = req.into_inner();
        require(!r.volume_id.is_empty(), "volume_id")?;
        path(&r.volume_path, "volume_path")?;
        let id = r.volume_id;
        let cap = self
            .0
            .run(&id.clone(), move |d| ops::expand(d, &id))
            .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: cap as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> R<csi::NodeGetCapabilitiesResponse> {
        use csi::node_service_capability::rpc::Type::*;
        use csi::node_service_capability::{Rpc, Type};
        let caps = [
            StageUnstageVolume,
            GetVolumeStats,
            ExpandVolume,
            SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| csi::NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> R<csi::NodeGetInfoResponse> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.0.driver.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
