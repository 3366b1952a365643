//! Swapping in new password and ACL files (the watch is `crate::reload`).

use crate::engine::Broker;

/// Reloads now; logs and keeps the old policy when the new files are bad.
pub fn reload(broker: &Broker, why: &str) {
    match broker.auth.reload(&broker.config.auth) {
        Ok(()) => tracing::info!("authentication files reloaded ({why})"),
        Err(e) => {
            tracing::error!(
                "authentication files not reloaded ({why}), old ones stay in force: {e}"
            )
        }
    }
}
