//! Swapping in new password and ACL files (the watch is `crate::reload`).

use crate::auth::Auth;
use crate::config::AuthConfig;

/// Reloads now; logs and keeps the old policy when the new files are bad.
pub fn reload(auth: &Auth, config: &AuthConfig, why: &str) {
    match auth.reload(config) {
        Ok(()) => tracing::info!("authentication files reloaded ({why})"),
        Err(e) => {
            tracing::error!(
                "authentication files not reloaded ({why}), old ones stay in force: {e}"
            )
        }
    }
}
