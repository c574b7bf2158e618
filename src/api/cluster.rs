//! `GET /v1/cluster` (SPEC §9): this node's view of the cluster.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::schema::{ClusterPeer, ClusterView, GroupOwner};
use super::AppState;

#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "this node's partitions, their owner, catch-up lag and failovers", body = ClusterView),
        super::schema::Errors))]
/// In cluster mode: this node, the owner of the partitions, how far this node's
/// store is behind the stream, and the nodes it hears. Without `[cluster]`: 404.
pub async fn get(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(node) = state.cluster.get() else {
        return Err(ApiError::NotFound(
            "not in cluster mode (no [cluster] in the config)".to_string(),
        ));
    };
    let owner = node.owner();
    let (applied, stream_last, lag) = node.lag();
    let partitions = state.config.partitions;
    let mut peers: Vec<ClusterPeer> = node
        .peers()
        .into_iter()
        .map(|peer| ClusterPeer {
            node: peer.beat.node,
            advertise: peer.beat.advertise,
            role: peer.beat.role.as_str(),
            applied_seq: peer.beat.applied,
            heard_ms_ago: peer.heard.elapsed().as_millis() as u64,
        })
        .collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    let config = &node.config;
    let group_owners = (0..config.groups)
        .map(|group| {
            let owner = node.group_owner_address(group);
            GroupOwner {
                group,
                partitions: crate::cluster::group_partitions(partitions, config.groups, group),
                owner: owner.as_ref().map(|(node, _)| node.clone()),
                advertise: owner.map(|(_, advertise)| advertise),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(ClusterView {
        node: node.config.node.clone(),
        role: node.role().as_str(),
        stream: node.config.own_stream(),
        replicas: node.config.replicas,
        partitions,
        groups: config.groups,
        group: config.group,
        owned_partitions: node.owned_partitions(partitions),
        owner: owner.as_ref().map(|owner| owner.node.clone()),
        epoch: owner.as_ref().map_or(0, |owner| owner.epoch),
        applied_seq: applied,
        stream_last_seq: stream_last,
        lag,
        failovers: node.failovers.load(Ordering::Relaxed),
        forwarded: node.forwarded.load(Ordering::Relaxed),
        last_takeover_ms: node.last_takeover_ms.load(Ordering::Relaxed),
        seeds: node.seeds.load(Ordering::Relaxed),
        seed_chunks: node.seed_chunks.load(Ordering::Relaxed),
        seeded_from: node.seeded_from.load(Ordering::Relaxed),
        peers,
        group_owners,
    }))
}
