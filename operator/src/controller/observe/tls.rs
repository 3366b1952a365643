//! The certificates a cluster's TLS settings call for: issued (and renewed)
//! by the operator, read from the user's Secret, or left to cert-manager.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::secrets::{material_from, secret_string};
use super::{api_available, Context, Error};
use crate::certs;
use crate::controller::events;
use crate::crd::{MqttCluster, TlsMode, TlsSpec};
use crate::render::monitoring::{dns_names, DEFAULT_CERT_HOURS};
use crate::render::{Names, Observed};
use crate::validate::Problem;

/// What the certificates mean for the reconcile beyond rendering.
#[derive(Debug, Default)]
pub struct Certificates {
    /// What keeps the TLS settings from being applied.
    pub problems: Vec<Problem>,
    /// The operator-issued server certificate's expiry (RFC 3339).
    pub not_after: Option<String>,
    /// When the operator-issued server certificate is due for renewal.
    pub renew_in: Option<Duration>,
}

/// The TLS material to render with and what to report about it.
pub(in crate::controller) async fn observe(
    ctx: &Context,
    cluster: &MqttCluster,
    secrets: &Api<Secret>,
    names: &Names,
    ns: &str,
) -> Result<(Observed, Certificates), Error> {
    let mut observed = Observed::default();
    let mut out = Certificates::default();
    let Some(t) = cluster.spec.effective_tls() else {
        return Ok((observed, out));
    };
    match t.mode {
        TlsMode::Operator => {
            operator_issued(ctx, cluster, secrets, names, &t, &mut observed, &mut out).await?
        }
        TlsMode::Secret => {
            from_secret(cluster, secrets, ns, &t, &mut observed, &mut out).await?;
        }
        TlsMode::CertManager => {
            observed.cert_manager_crd =
                api_available(&ctx.client, "cert-manager.io/v1", "certificates").await;
            observed.tls_has_ca = true;
            if !observed.cert_manager_crd {
                out.problems.push(Problem {
                    reason: "CertManagerMissing",
                    message: "tls.mode is CertManager but the cert-manager.io/v1 Certificate API is not installed".into(),
                });
            }
        }
    }
    Ok((observed, out))
}

/// Operator mode: the CA and server certificate, kept while valid, issued
/// or renewed otherwise (told in an Event).
async fn operator_issued(
    ctx: &Context,
    cluster: &MqttCluster,
    secrets: &Api<Secret>,
    names: &Names,
    t: &TlsSpec,
    observed: &mut Observed,
    out: &mut Certificates,
) -> Result<(), Error> {
    let ca = secrets.get_opt(&names.ca_secret()).await?;
    let srv = secrets.get_opt(&names.tls_secret()).await?;
    let existing = material_from(ca.as_ref(), srv.as_ref());
    let any_stored = ca.is_some() || srv.is_some();
    let hours = t.duration_hours.unwrap_or(DEFAULT_CERT_HOURS);
    let now = (ctx.now)();
    let issued = certs::ensure(
        &names.cluster,
        &names.client_host(),
        &dns_names(names, t),
        hours,
        existing.as_ref(),
        now,
    )?;
    events::certificates_issued(ctx, cluster, &issued, any_stored).await;
    let left = issued.renew_at - now;
    out.renew_in = Some(Duration::from_secs(left.whole_seconds().max(60) as u64));
    out.not_after = Some(
        issued
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    observed.tls = Some(issued.material);
    observed.tls_has_ca = true;
    Ok(())
}

/// Secret mode: the user's Secret must hold the certificate and key, and a
/// CA where peers or clients are to be verified.
async fn from_secret(
    cluster: &MqttCluster,
    secrets: &Api<Secret>,
    ns: &str,
    t: &TlsSpec,
    observed: &mut Observed,
    out: &mut Certificates,
) -> Result<(), Error> {
    let name = t.secret_name.clone().unwrap_or_default();
    let Some(s) = secrets.get_opt(&name).await? else {
        out.problems.push(Problem {
            reason: "SecretNotFound",
            message: format!("tls.secretName: Secret {name:?} does not exist in namespace {ns}"),
        });
        return Ok(());
    };
    for key in ["tls.crt", "tls.key"] {
        if secret_string(&s, key).is_none() {
            out.problems.push(Problem {
                reason: "SecretKeyMissing",
                message: format!("tls.secretName: Secret {name:?} has no key {key:?}"),
            });
        }
    }
    observed.tls_has_ca = secret_string(&s, "ca.crt").is_some();
    let needs_ca = cluster
        .spec
        .listeners
        .active()
        .iter()
        .any(|l| l.kind.needs_certificate() && l.spec.require_client_certificate);
    if needs_ca && !observed.tls_has_ca {
        out.problems.push(Problem {
            reason: "SecretKeyMissing",
            message: format!(
                "requireClientCertificate needs a CA: Secret {name:?} has no key \"ca.crt\""
            ),
        });
    }
    Ok(())
}
