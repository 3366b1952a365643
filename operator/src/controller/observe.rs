//! What the controller reads before it decides anything.

pub mod pods;
pub mod secrets;

use kube::Client;

/// Whether the API server serves `group_version` with `plural`.
pub(super) async fn api_available(client: &Client, group_version: &str, plural: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(_) => false,
    }
}
