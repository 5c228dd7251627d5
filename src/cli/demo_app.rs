//! `ward demo-app` (hidden): the workloads and clients `ward demo` runs in
//! its pods, so that the demo needs nothing on the machine but `ward`. They
//! are ordinary plaintext programs that know nothing of the mesh: the point
//! of the demo is that the sidecars carry their traffic unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Every client step gives up after this long, so a refused flow shows as
/// a failure instead of a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Subcommand)]
pub enum DemoApp {
    /// An HTTP/1.1 service that answers every request with its name, the
    /// method and the path.
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// A server-speaks-first TCP service, like a database: it greets with
    /// `<name> ready`, then echoes each line back.
    Banner {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// One HTTP/1.1 request; prints the status code, or `000 <error>`.
    Request {
        #[arg(long, default_value = "GET")]
        method: String,
        /// http://IP:PORT/PATH
        url: String,
    },
    /// GET a URL and print its body; fails unless the status is 2xx (for
    /// reading a sidecar's admin server from inside its pod).
    Get { url: String },
    /// Connects, reads the greeting, sends one line and prints the greeting
    /// and the echo, or `closed: <error>`.
    Talk { addr: SocketAddr, line: String },
}

pub async fn run(app: DemoApp) -> Result<()> {
    match app {
        DemoApp::Http { listen, name } => serve_http(listen, name).await,
        DemoApp::Banner { listen, name } => serve_banner(listen, name).await,
        DemoApp::Request { method, url } => {
            match tokio::time::timeout(CLIENT_TIMEOUT, request(&method, &url)).await {
                Ok(Ok((status, _))) => println!("{status}"),
                Ok(Err(e)) => println!("000 {e:#}"),
                Err(_) => println!("000 timed out"),
            }
            Ok(())
        }
        DemoApp::Get { url } => {
            let (status, body) = tokio::time::timeout(CLIENT_TIMEOUT, request("GET", &url))
                .await
                .context("timed out")??;
            anyhow::ensure!((200..300).contains(&status), "{url}: HTTP {status}");
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        DemoApp::Talk { addr, line } => {
            match tokio::time::timeout(CLIENT_TIMEOUT, talk(addr, &line)).await {
                Ok(Ok((greeting, echo))) => println!("{greeting} | {echo}"),
                Ok(Err(e)) => println!("closed: {e:#}"),
                Err(_) => println!("closed: timed out"),
            }
            Ok(())
        }
    }
}

async fn serve_http(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = format!("{name}: {} {}\n", req.method(), req.uri().path());
                async move { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn serve_banner(listen: SocketAddr, name: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let greeting = format!("{name} ready\n");
        tokio::spawn(async move {
            let (read, mut write) = tcp.into_split();
            if write.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

async fn request(method: &str, url: &str) -> Result<(u16, Bytes)> {
    let uri: hyper::Uri = url.parse().context("invalid URL")?;
    let authority = uri.authority().context("URL without host:port")?.clone();
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .context("the demo client takes IP:PORT, not host names")?;
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn talk(addr: SocketAddr, line: &str) -> Result<(String, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (read, mut write) = tcp.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await?.context("no greeting")?;
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let echo = lines.next_line().await?.context("no echo")?;
    Ok((greeting, echo))
}
