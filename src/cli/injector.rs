//! `ward injector`: serve the mutating admission webhook. The decision is
//! `ward::injector` (the same injection as `ward inject`); this file reads
//! the flags, starts the server and stops it on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ward::injector::{InjectorServer, MUTATE_PATH, TlsFiles, webhook_limits};
use ward_config::parse_duration;

use super::inject::SettingsArgs;

#[derive(Args)]
pub struct InjectorArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "WARD_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain the API server verifies (the webhook's caBundle signs it).
    #[arg(long, env = "WARD_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WARD_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    /// How often to read --tls-cert and --tls-key again: a changed, valid
    /// pair serves new connections without a restart.
    #[arg(
        long,
        env = "WARD_INJECTOR_TLS_RELOAD_INTERVAL",
        default_value = "10s",
        value_parser = interval
    )]
    pub tls_reload_interval: Duration,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub async fn run(args: InjectorArgs) -> Result<()> {
    super::raise_open_files_limit();
    let config = args.settings.config()?;
    let tls = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        reload_interval: args.tls_reload_interval,
    };
    let server = InjectorServer::bind(args.listen, tls, config, webhook_limits()).await?;
    tracing::info!(
        listen = %server.local_addr()?,
        path = MUTATE_PATH,
        "injector serving"
    );
    server.run(super::ca::shutdown_signal()).await;
    tracing::info!("injector stopped");
    Ok(())
}

/// A duration such as `10s` or `1m`, above zero.
fn interval(value: &str) -> Result<Duration, String> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}
