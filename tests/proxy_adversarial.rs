//! Adversarial end-to-end tests of `ward proxy` on loopback: peers that
//! present no certificate, a foreign or expired one, speak plaintext, TLS 1.2
//! or nothing at all; a CA that is down at start or at renewal; mesh files
//! that break or move under a running sidecar; endpoints that are gone.
//! Every rejection is checked on the server sidecar's real metrics (the
//! exact `reason`), against the app behind it (it never accepted), and for
//! panics (none, in any proxy task).

mod support;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, SupportedProtocolVersion};
use support::mesh::*;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use ward_ca::authority::Authority;
use ward_config::{SpiffeId, TrustDomain};
use ward_proxy::identity::Svid;
use ward_proxy::settings::Limits;
use ward_proxy::tls::ServerSvidVerifier;
use ward_proxy::tls::config::{MESH_ALPN, client_config};

const DAY: Duration = Duration::from_secs(86_400);
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const RENEW_FAILED: &str = "ward_identity_renewals_total{result=\"failure\"}";
const RELOAD_OK: &str = "ward_policy_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "ward_policy_reloads_total{result=\"failure\"}";
const EXPIRY: &str = "ward_identity_cert_expiration_timestamp_seconds";

// ---- panics -----------------------------------------------------------------

/// Panics on tokio worker threads, i.e. in proxy (or harness) tasks; a test
/// thread's own assertion failures run on the test thread and are not counted.
static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            // "tokio-rt-worker" (older tokio: "tokio-runtime-worker").
            if thread.name().is_some_and(|n| n.starts_with("tokio-")) {
                let mut panics = WORKER_PANICS.lock().unwrap_or_else(|p| p.into_inner());
                panics.push(info.to_string());
            }
            default(info);
        }));
    });
}

/// No task panicked, the sidecar still runs, and its admin server answers.
async fn assert_healthy(sidecar: &Sidecar) {
    let panics = WORKER_PANICS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(panics.is_empty(), "a proxy task panicked: {panics:?}");
    assert!(!sidecar.task.is_finished(), "the sidecar stopped");
    assert_eq!(get(sidecar.admin, "/live").await.0, 200, "/live");
}

// ---- a server sidecar with an echo app, and clients of it ---------------------

/// The `orders` sidecar (inbound only) in front of an echo app.
struct Backend {
    sidecar: Sidecar,
    accepts: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(ca: &TestCa, limits: Limits) -> Self {
        watch_panics();
        let (app, accepts) = echo_app().await;
        let mesh = ca.tmp.path().join(format!("backend-{}.yaml", app.port()));
        write_mesh(&mesh, &[("orders", &workload("orders"), app, 8080)]);
        let mut spec = SidecarSpec::new(ca, workload("orders"), mesh);
        spec.app = Some(app);
        spec.limits = limits;
        Self {
            sidecar: spec.start().await,
            accepts,
        }
    }

    async fn ready(ca: &TestCa) -> Self {
        let b = Self::start(ca, Limits::default()).await;
        assert!(b.sidecar.wait_ready(Duration::from_secs(10)).await, "ready");
        b
    }

    fn addr(&self) -> SocketAddr {
        self.sidecar.inbound.unwrap()
    }

    fn accepted(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// The inbound handshake-error series, e.g. `...{direction="inbound",reason="x"} 1`.
    async fn inbound_errors(&self) -> Vec<String> {
        let text = self.sidecar.metrics().await;
        let prefix = "ward_tls_handshake_errors_total{direction=\"inbound\"";
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Exactly `count` failed inbound handshakes, all for `reason`; the app
    /// never saw a connection; nothing panicked.
    async fn assert_refused(&self, reason: &str, count: u32) {
        let series =
            format!("ward_tls_handshake_errors_total{{direction=\"inbound\",reason=\"{reason}\"}}");
        let counted = poll(Duration::from_secs(5), || async {
            self.sidecar.metric(&series).await >= f64::from(count)
        })
        .await;
        let observed = self.inbound_errors().await;
        assert!(
            counted && observed == [format!("{series} {count}")],
            "expected {series} {count}; observed {observed:?}"
        );
        assert_eq!(self.accepted(), 0, "the app must never see the connection");
        assert_healthy(&self.sidecar).await;
    }
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn authority(ca: &TestCa) -> Authority {
    ca.dir.load(None, OffsetDateTime::now_utc()).unwrap()
}

/// What a `web` sidecar would use: TLS 1.3, verifies orders' SVID, presents `svid`.
fn web_config(ca: &TestCa, svid: &Svid) -> ClientConfig {
    client_config(svid, support::roots(&ca.dir), td(), workload("orders")).unwrap()
}

/// A hand-built client: verifies the server exactly like a sidecar (so the
/// handshake gets as far as client authentication) but speaks `versions`
/// and presents `svid` only if given.
fn custom_config(
    ca: &TestCa,
    svid: Option<&Svid>,
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let verifier = ServerSvidVerifier::new(support::roots(&ca.dir), td(), workload("orders"));
    let provider: Arc<CryptoProvider> = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match svid {
        Some(svid) => builder
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(svid.certified.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![MESH_ALPN.to_vec()];
    config
}

/// Handshakes, sends "ping", half-closes, reads everything back (bounded).
/// In TLS 1.3 the client finishes before the server has judged its
/// certificate, so a rejection may show only as an alert on the read.
async fn tls_ping(addr: SocketAddr, config: ClientConfig) -> io::Result<Vec<u8>> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let connector = TlsConnector::from(Arc::new(config));
        let mut tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
        tls.write_all(b"ping").await?;
        tls.shutdown().await?;
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await?;
        Ok(back)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::other("TLS exchange timed out")))
}

fn assert_nothing_back(result: &io::Result<Vec<u8>>) {
    if let Ok(back) = result {
        assert!(back.is_empty(), "the app answered: {back:?}");
    }
}

/// Writes `bytes` on a plain TCP connection and reads until the proxy closes.
async fn raw_send(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await; // the proxy may reset mid-write
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
    assert!(read.is_ok(), "the proxy must close the connection");
    back
}

/// 1 KiB from a fixed xorshift32 sequence.
fn noise() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---- client authentication ---------------------------------------------------------

/// Control: the helpers below do reach the app when the client is valid, so
/// the refusals the other tests see come from the proxy, not the helpers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_valid_client_svid_reaches_the_app() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let svid = support::svid(&authority(&ca), &workload("web"), DAY);
    assert_eq!(
        tls_ping(b.addr(), web_config(&ca, &svid)).await.unwrap(),
        b"ping"
    );
    let custom = custom_config(&ca, Some(&svid), TLS13);
    assert_eq!(tls_ping(b.addr(), custom).await.unwrap(), b"ping");
    assert_eq!(b.accepted(), 2);
    assert!(b.inbound_errors().await.is_empty());
    assert_healthy(&b.sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let result = tls_ping(b.addr(), custom_config(&ca, None, TLS13)).await;
    assert_nothing_back(&result);
    b.assert_refused("no_client_certificate", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_of_the_same_trust_domain_is_refused() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    // Same trust domain, hence the same CA names: the chain reaches our root
    // by name, and only the signature tells them apart.
    let (_tmp, _dir, rogue) = support::ca(TD);
    let svid = support::svid(&rogue, &workload("web"), DAY);
    let result = tls_ping(b.addr(), web_config(&ca, &svid)).await;
    assert_nothing_back(&result);
    b.assert_refused("untrusted_certificate", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let svid = support::svid(&authority(&ca), &workload("web"), Duration::from_secs(1));
    // notBefore is backdated 5 min, notAfter is (now truncated to seconds) + 1 s;
    // webpki compares whole seconds and rejects only once now > notAfter.
    let expired_at = svid.not_after + time::Duration::seconds(1);
    while OffsetDateTime::now_utc() <= expired_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = tls_ping(b.addr(), web_config(&ca, &svid)).await;
    assert_nothing_back(&result);
    b.assert_refused("expired_certificate", 1).await;
}

/// A client whose SVID expires after it made a session: the session it
/// resumes (TLS 1.3 resumption verifies no chain, and rustls keeps
/// sessions for 24 h) is refused as expired, as a full handshake would be;
/// letting an SVID expire is how the mesh revokes a workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_after_the_client_svid_expired_is_refused() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let ttl = Duration::from_secs(2);
    let svid = support::svid(&authority(&ca), &workload("web"), ttl);
    let config = web_config(&ca, &svid);
    assert_eq!(tls_ping(b.addr(), config.clone()).await.unwrap(), b"ping");
    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
    // The same configuration, hence the same session store: it resumes.
    assert_nothing_back(&tls_ping(b.addr(), config).await);
    let series =
        "ward_tls_handshake_errors_total{direction=\"inbound\",reason=\"expired_certificate\"}";
    b.sidecar.assert_metric(series, 1.0).await;
    assert_eq!(
        b.accepted(),
        1,
        "only the session made while the SVID was valid"
    );
    assert_healthy(&b.sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_svid_of_an_untrusted_foreign_trust_domain_is_refused() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let (_tmp, _dir, foreign) = support::ca("other.test");
    let id = SpiffeId::parse("spiffe://other.test/ns/shop/sa/web").unwrap();
    let svid = support::svid(&foreign, &id, DAY);
    let result = tls_ping(b.addr(), web_config(&ca, &svid)).await;
    assert_nothing_back(&result);
    // The chain is checked before the SVID rules, so a foreign CA we do not
    // trust is `untrusted_certificate`, not `wrong_trust_domain` (that label
    // needs a foreign-domain SVID chaining to one of our roots).
    b.assert_refused("untrusted_certificate", 1).await;
}

// ---- not TLS, wrong TLS, silence ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_garbage_are_not_tls() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    // "GET " is not a TLS record header: rustls reports InvalidContentType.
    let back = raw_send(b.addr(), b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n").await;
    assert!(!back.starts_with(b"HTTP/"), "no HTTP answer");
    b.assert_refused("not_tls", 1).await;
    // Random bytes: the first one (0x51) is no TLS content type either, so
    // the record layer rejects them the same way.
    let noise = noise();
    assert!(
        !(0x14..=0x18).contains(&noise[0]),
        "pattern starts like TLS"
    );
    raw_send(b.addr(), &noise).await;
    b.assert_refused("not_tls", 2).await;
    // A well-formed handshake record carrying garbage: past the record
    // layer, the ClientHello itself fails to decode.
    // Record: handshake, 512 bytes; message: ClientHello, 508 bytes of noise.
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    hello.extend_from_slice(&noise[..0x1fc]);
    raw_send(b.addr(), &hello).await;
    b.assert_refused("not_tls", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_is_an_incompatible_peer() {
    let ca = TestCa::start(DAY).await;
    let b = Backend::ready(&ca).await;
    let svid = support::svid(&authority(&ca), &workload("web"), DAY);
    let result = tls_ping(b.addr(), custom_config(&ca, Some(&svid), TLS12)).await;
    assert!(result.is_err(), "a TLS 1.2 handshake must fail: {result:?}");
    b.assert_refused("incompatible_peer", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_at_the_handshake_timeout() {
    let ca = TestCa::start(DAY).await;
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let b = Backend::start(&ca, limits).await;
    assert!(b.sidecar.wait_ready(Duration::from_secs(10)).await);
    let mut tcp = TcpStream::connect(b.addr()).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    let waited = start.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without a byte: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}, expected ~1 s"
    );
    b.assert_refused("timeout", 1).await;
}

// ---- the CA goes away ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_start_means_not_ready_and_refusing_until_it_returns() {
    let mut ca = TestCa::start(DAY).await;
    ca.stop().await;
    let b = Backend::start(&ca, Limits::default()).await;
    // Not ready for (at least) 1.5 s while every SVID request fails.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            get(b.sidecar.admin, "/ready").await.0,
            503,
            "ready without an SVID"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.sidecar.metric(RENEW_FAILED).await >= 1.0);
    assert_eq!(b.sidecar.metric(EXPIRY).await, 0.0);
    // Inbound refuses: there is no certificate to present.
    let svid = support::svid(&authority(&ca), &workload("web"), DAY);
    assert_nothing_back(&tls_ping(b.addr(), web_config(&ca, &svid)).await);
    b.assert_refused("no_identity", 1).await;

    // The CA returns on the same address: the backoff (1 s doubling) finds it.
    ca.serve().await;
    assert!(
        b.sidecar.wait_ready(Duration::from_secs(10)).await,
        "ready once the CA is back"
    );
    assert_eq!(
        tls_ping(b.addr(), web_config(&ca, &svid)).await.unwrap(),
        b"ping"
    );
    assert_eq!(b.accepted(), 1);
    assert_healthy(&b.sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_renewal_serves_until_expiry_then_fails_closed() {
    // 6-second SVIDs: whether renewal is due at ~3 s (as documented) or
    // every second (as it is today, see the next test), the CA is missed
    // several times before the SVID expires.
    let mut ca = TestCa::start(Duration::from_secs(6)).await;
    let b = Backend::ready(&ca).await;
    let svid = support::svid(&authority(&ca), &workload("web"), DAY);
    ca.stop().await;
    // Once a renewal has failed, nothing newer can be installed: the gauge
    // holds the expiry of the SVID the sidecar is left with.
    assert!(
        poll(Duration::from_secs(5), || async {
            b.sidecar.metric(RENEW_FAILED).await >= 1.0
        })
        .await,
        "a renewal failed"
    );
    let failed_first = b.sidecar.metric(RENEW_FAILED).await;
    let expiry = b.sidecar.metric(EXPIRY).await;
    let not_after = OffsetDateTime::from_unix_timestamp(expiry as i64).unwrap();
    assert!(
        not_after > OffsetDateTime::now_utc(),
        "the SVID is still valid"
    );

    // Serving on the current SVID while the CA is down.
    assert_eq!(
        tls_ping(b.addr(), web_config(&ca, &svid)).await.unwrap(),
        b"ping"
    );
    let margin = time::Duration::milliseconds(300);
    while OffsetDateTime::now_utc() + margin < not_after {
        assert_eq!(
            get(b.sidecar.admin, "/ready").await.0,
            200,
            "ready before expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_later = b.sidecar.metric(RENEW_FAILED).await;
    assert!(
        failed_later > failed_first,
        "renewals keep failing ({failed_later})"
    );

    // Past notAfter: not ready, and handshakes fail closed.
    assert!(
        poll(Duration::from_secs(2), || async {
            get(b.sidecar.admin, "/ready").await.0 == 503
        })
        .await,
        "not ready after expiry"
    );
    assert_nothing_back(&tls_ping(b.addr(), web_config(&ca, &svid)).await);
    assert_eq!(b.accepted(), 1);
    let refused = "ward_tls_handshake_errors_total{direction=\"inbound\",reason=\"no_identity\"}";
    assert!(
        poll(Duration::from_secs(2), || async {
            b.sidecar.metric(refused).await == 1.0
        })
        .await
    );

    // The CA returns: the backoff (at most 8 s by now) finds it.
    ca.serve().await;
    assert!(
        b.sidecar.wait_ready(Duration::from_secs(15)).await,
        "ready once the CA is back"
    );
    assert_eq!(
        tls_ping(b.addr(), web_config(&ca, &svid)).await.unwrap(),
        b"ping"
    );
    assert_eq!(b.accepted(), 2);
    assert_healthy(&b.sidecar).await;
}

/// docs/proxy.md: "renewal at 50 % ± 10 % jitter" of the SVID's lifetime.
/// 60 s is the shortest `--svid-ttl` the CA accepts, so the first renewal is
/// due 27-33 s after issuance, and none may happen in the first 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_due_at_half_the_svid_lifetime() {
    let ca = TestCa::start(Duration::from_secs(60)).await;
    let b = Backend::ready(&ca).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let renewed = b
        .sidecar
        .metric("ward_identity_renewals_total{result=\"success\"}")
        .await;
    assert_eq!(
        renewed, 1.0,
        "{renewed} SVIDs issued in 3 s for a 60 s lifetime: renewal_delay takes \
         half of notAfter - notBefore, and the CA backdates notBefore by 5 min"
    );
    assert_healthy(&b.sidecar).await;
}

// ---- the mesh file changes under a running sidecar ----------------------------------

/// The `web` sidecar forwarding to orders:8080, ready.
async fn web(ca: &TestCa, mesh: &Path) -> Sidecar {
    watch_panics();
    let mut spec = SidecarSpec::new(ca, workload("web"), mesh.to_path_buf());
    spec.forwards = vec![("orders".into(), 8080)];
    let web = spec.start().await;
    assert!(web.wait_ready(Duration::from_secs(10)).await, "web ready");
    web
}

/// Replaces `path` in one rename, so the poller never sees half a file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn orders_at(endpoint: SocketAddr, path: &Path) {
    let tmp = path.with_extension("new");
    write_mesh(&tmp, &[("orders", &workload("orders"), endpoint, 8080)]);
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_metric(sidecar: &Sidecar, series: &str, value: f64) -> bool {
    poll(Duration::from_secs(5), || async {
        sidecar.metric(series).await == value
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mesh_file_keeps_the_last_good_one_and_a_good_one_moves_traffic() {
    let ca = TestCa::start(DAY).await;
    let (one, two) = (Backend::ready(&ca).await, Backend::ready(&ca).await);
    let mesh = ca.tmp.path().join("web-mesh.yaml");
    orders_at(one.addr(), &mesh);
    let web = web(&ca, &mesh).await;
    assert_eq!(round_trip(web.forwards[0], b"a").await.unwrap(), b"a");
    assert_eq!((one.accepted(), two.accepted()), (1, 0));
    assert_eq!(web.metric(RELOAD_OK).await, 1.0, "the initial load");

    replace_file(
        &mesh,
        "trust_domain: mesh.test\nservices: [orders: {identity\n",
    );
    assert!(
        wait_metric(&web, RELOAD_FAILED, 1.0).await,
        "a failed reload is counted"
    );
    assert_eq!(round_trip(web.forwards[0], b"b").await.unwrap(), b"b");
    assert_eq!(
        (one.accepted(), two.accepted()),
        (2, 0),
        "last good registry"
    );

    orders_at(two.addr(), &mesh);
    assert!(
        wait_metric(&web, RELOAD_OK, 2.0).await,
        "the good file is loaded"
    );
    assert_eq!(round_trip(web.forwards[0], b"c").await.unwrap(), b"c");
    assert_eq!((one.accepted(), two.accepted()), (2, 1), "traffic moved");
    assert_eq!(web.metric(RELOAD_FAILED).await, 1.0);
    assert_healthy(&web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_reloaded() {
    let ca = TestCa::start(DAY).await;
    let (one, two) = (Backend::ready(&ca).await, Backend::ready(&ca).await);
    // The kubelet's layout: mesh.yaml -> ..data/mesh.yaml, ..data -> ..v1.
    let dir = ca.tmp.path().join("configmap");
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    orders_at(one.addr(), &dir.join("..v1/mesh.yaml"));
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/mesh.yaml", dir.join("mesh.yaml")).unwrap();
    let web = web(&ca, &dir.join("mesh.yaml")).await;
    assert_eq!(round_trip(web.forwards[0], b"a").await.unwrap(), b"a");
    assert_eq!((one.accepted(), two.accepted()), (1, 0));

    // An update: new directory, new ..data link renamed over the old one.
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    orders_at(two.addr(), &dir.join("..v2/mesh.yaml"));
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    assert!(
        wait_metric(&web, RELOAD_OK, 2.0).await,
        "the swap is noticed"
    );
    assert_eq!(round_trip(web.forwards[0], b"b").await.unwrap(), b"b");
    assert_eq!((one.accepted(), two.accepted()), (1, 1), "traffic moved");
    assert_eq!(web.metric(RELOAD_FAILED).await, 0.0);
    assert_healthy(&web).await;
}

// ---- the endpoint is gone ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_with_no_reachable_endpoint_closes_the_app_connection() {
    let ca = TestCa::start(DAY).await;
    let (_held, dead) = refusing_addr();
    let mesh = ca.tmp.path().join("web-mesh.yaml");
    orders_at(dead, &mesh);
    let web = web(&ca, &mesh).await;
    for n in 1..=2 {
        let mut app = TcpStream::connect(web.forwards[0]).await.unwrap();
        let _ = app.write_all(b"anyone?").await;
        let start = Instant::now();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), app.read_to_end(&mut back)).await;
        assert!(
            read.is_ok(),
            "closed promptly (waited {:?})",
            start.elapsed()
        );
        assert!(back.is_empty());
        let series = "ward_tcp_connection_errors_total{direction=\"outbound\",reason=\"no_reachable_endpoint\"}";
        assert!(wait_metric(&web, series, f64::from(n)).await, "counted {n}");
    }
    let handshakes = "ward_tls_handshake_errors_total{direction=\"outbound\"";
    assert!(
        !web.metrics().await.contains(handshakes),
        "no handshake was attempted"
    );
    assert_healthy(&web).await;
}
