//! `ward proxy`: the sidecar, in explicit mode (static listeners) or in
//! transparent mode (behind `ward init`'s iptables rules).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use ward::intercept::settings::parse_mark;
use ward_config::{SpiffeId, parse_timeout};
use ward_proxy::Proxy;
use ward_proxy::dial::Dialer;
use ward_proxy::identity::{CaClient, IdentityConfig};
use ward_proxy::settings::{Egress, Forward, Inbound, Limits, ProxySettings, Transparent};

#[derive(Args)]
pub struct ProxyArgs {
    /// This workload's SPIFFE ID (the CA issues it only if the token allows).
    #[arg(long, env = "WARD_IDENTITY")]
    pub identity: String,
    /// The CA's URL, e.g. https://ward-ca.ward-system.svc:8443.
    #[arg(long, env = "WARD_CA_URL")]
    pub ca: String,
    /// PEM roots to verify the CA with; also the initial trust bundle.
    #[arg(long, env = "WARD_CA_BUNDLE")]
    pub ca_bundle: PathBuf,
    /// File holding the bearer token (re-read at every renewal).
    #[arg(long, env = "WARD_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The mesh file (services, identities, endpoints, ports); reloaded on change.
    #[arg(long, env = "WARD_MESH")]
    pub mesh: PathBuf,
    /// Accept mesh (mTLS) connections here...
    #[arg(long, env = "WARD_INBOUND", requires = "app")]
    pub inbound: Option<SocketAddr>,
    /// ...and forward them to the app here.
    #[arg(long, env = "WARD_APP", requires = "inbound")]
    pub app: Option<SocketAddr>,
    /// LISTEN=SERVICE[:PORT]: plaintext from the app on LISTEN goes to SERVICE over mTLS. Repeatable.
    #[arg(long = "forward", env = "WARD_FORWARD", value_delimiter = ',')]
    pub forwards: Vec<Forward>,
    /// Transparent mode: take the connections `ward init` redirects (inbound
    /// to --inbound-port, outbound to --outbound-port) and recover where they
    /// were going. Run the proxy as the UID `ward init` excludes (--proxy-uid).
    #[arg(long, env = "WARD_TRANSPARENT", conflicts_with_all = ["inbound", "app", "forwards"])]
    pub transparent: bool,
    /// Transparent mode: mesh connections arrive here (any address).
    #[arg(long, env = "WARD_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    /// Transparent mode: the app's outgoing connections arrive here (loopback).
    #[arg(long, env = "WARD_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Transparent mode: what to do with a connection to a destination that
    /// is not a service in the mesh file: `deny` refuses, counts and logs it
    /// (under the mesh file's `mode: audit` it is let through and counted as
    /// `audit_deny`); `passthrough` connects in plaintext, as the app asked.
    #[arg(long, env = "WARD_EGRESS", default_value = "deny", value_parser = egress_parser())]
    pub egress: Egress,
    /// Put this SO_MARK (decimal or 0x hex) on every connection the proxy
    /// makes, for `ward init --proxy-mark`. Needs CAP_NET_ADMIN.
    #[arg(long, env = "WARD_MARK", value_parser = parse_mark)]
    pub mark: Option<u32>,
    /// Admin server (/metrics, /ready, /live).
    #[arg(long, env = "WARD_ADMIN", default_value = "0.0.0.0:15020")]
    pub admin: SocketAddr,
    /// On SIGTERM, how long open connections may finish.
    #[arg(long, env = "WARD_DRAIN_TIMEOUT", default_value = "30s")]
    pub drain_timeout: String,
    #[arg(long, env = "WARD_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: String,
    /// On `detect` ports, wait this long for the client's first bytes
    /// (declare server-speaks-first ports `tcp` to skip the wait).
    #[arg(long, env = "WARD_DETECT_TIMEOUT", default_value = "1s")]
    pub detect_timeout: String,
    /// Close connections with no traffic either way for this long.
    #[arg(long, env = "WARD_IDLE_TIMEOUT", default_value = "1h")]
    pub idle_timeout: String,
    /// Per listener; all of them together hold no more than the open-files
    /// limit leaves room for (ward_tcp_connection_budget).
    #[arg(long, env = "WARD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Reuse an HTTP/1 mesh connection for the app's next connections to
    /// the same endpoint for at most this long after it opened (endpoints
    /// that are Service cluster IPs then still spread over their pods).
    #[arg(long, env = "WARD_POOL_MAX_AGE", default_value = "10s")]
    pub pool_max_age: String,
    /// Idle mesh connections pooled per endpoint; 0 turns pooling off.
    #[arg(long, env = "WARD_POOL_MAX_IDLE", default_value_t = 64)]
    pub pool_max_idle: usize,
    /// How often the trust bundle is refreshed from the CA.
    #[arg(long, env = "WARD_BUNDLE_REFRESH", default_value = "5m")]
    pub bundle_refresh: String,
}

/// `--egress` of `ward proxy` and of injection (`ward inject`, `ward
/// injector`): the names `Egress` knows, listed in `--help`.
pub fn egress_parser() -> impl TypedValueParser<Value = Egress> {
    PossibleValuesParser::new(Egress::ALL.map(Egress::as_str))
        .try_map(|name| name.parse::<Egress>())
}

/// The proxy's durations are timeouts and intervals, so `ms` is allowed.
fn duration(flag: &str, value: &str) -> Result<Duration> {
    let d = parse_timeout(value).with_context(|| flag.to_string())?;
    if d.is_zero() {
        bail!("{flag} must be greater than zero");
    }
    Ok(d)
}

pub async fn run(args: ProxyArgs) -> Result<()> {
    super::raise_open_files_limit();
    let id = SpiffeId::parse(&args.identity).context("--identity")?;
    id.workload().context("--identity")?;
    let bundle = std::fs::read_to_string(&args.ca_bundle)
        .with_context(|| format!("cannot read --ca-bundle {}", args.ca_bundle.display()))?;
    if args.inbound.is_none() && args.forwards.is_empty() && !args.transparent {
        bail!(
            "nothing to do: give --transparent, or --inbound LISTEN --app ADDR and/or --forward LISTEN=SERVICE"
        );
    }
    let transparent = args.transparent.then_some(Transparent {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        egress: args.egress,
    });
    let ports = [args.inbound_port, args.outbound_port, args.admin.port()];
    let distinct = ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2];
    if transparent.is_some() && (ports.contains(&0) || !distinct) {
        bail!(
            "--inbound-port, --outbound-port and the --admin port must be three different non-zero ports (got {ports:?})"
        );
    }
    let dialer = Dialer::new(args.mark).context("--mark")?;
    let settings = ProxySettings {
        identity: IdentityConfig {
            id,
            ca: CaClient::new(&args.ca, &bundle)?.with_dialer(dialer),
            token_file: args.token_file,
            initial_bundle_pem: bundle,
            bundle_refresh: duration("--bundle-refresh", &args.bundle_refresh)?,
        },
        mesh_file: args.mesh,
        inbound: args
            .inbound
            .zip(args.app)
            .map(|(listen, app)| Inbound { listen, app }),
        forwards: args.forwards,
        transparent,
        dialer,
        admin: args.admin,
        limits: Limits {
            handshake_timeout: duration("--handshake-timeout", &args.handshake_timeout)?,
            detect_timeout: duration("--detect-timeout", &args.detect_timeout)?,
            idle_timeout: duration("--idle-timeout", &args.idle_timeout)?,
            max_connections: args.max_connections.max(1),
            pool_max_age: duration("--pool-max-age", &args.pool_max_age)?,
            pool_max_idle: args.pool_max_idle,
            ..Limits::default()
        },
        drain_timeout: duration("--drain-timeout", &args.drain_timeout)?,
        reload_interval: Duration::from_secs(2),
    };
    let proxy = Proxy::bind(settings).await?;
    tracing::info!(
        inbound = ?proxy.inbound_addr(),
        forwards = ?proxy.forward_addrs(),
        admin = ?proxy.admin_addr(),
        "proxy listening"
    );
    proxy.run(crate::cli::ca::shutdown_signal()).await;
    Ok(())
}
