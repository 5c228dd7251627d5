//! `ward injector`: serve the mutating admission webhook. The decision is
//! `ward::injector` (the same injection as `ward inject`); this file reads
//! the flags, starts the server and stops it on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use ward::injector::{InjectorServer, MUTATE_PATH, TlsFiles, webhook_limits};

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
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub async fn run(args: InjectorArgs) -> Result<()> {
    let config = args.settings.config()?;
    let tls = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
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
