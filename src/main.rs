//! `ward`: one binary for the whole mesh. This file only parses the command
//! line and dispatches; each subcommand lives in `cli/`.
#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "ward: a service-mesh sidecar with mutual TLS, SPIFFE identities and role-based policy"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Worker threads of the async runtime (default: one per CPU; 1 runs
    /// everything on one thread).
    #[arg(long, global = true, env = "WARD_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// ward's certificate authority: create it, mint join tokens, serve SVIDs.
    Ca {
        #[command(subcommand)]
        command: cli::ca::CaCommand,
    },
    /// Run a local mesh end to end and print what happened.
    Demo(cli::demo::DemoArgs),
    /// The plaintext workloads and clients `ward demo` runs in its pods.
    #[command(hide = true)]
    DemoApp {
        #[command(subcommand)]
        app: cli::demo_app::DemoApp,
    },
    /// Add ward's sidecar to Kubernetes manifests (file or stdin) and print them.
    Inject(cli::inject::InjectArgs),
    /// Serve the Kubernetes mutating admission webhook that injects ward's sidecar.
    Injector(cli::injector::InjectorArgs),
    /// Program this network namespace's iptables to send the pod's TCP through the sidecar (init container; needs NET_ADMIN).
    Init(cli::init::InitArgs),
    /// Check policy files, or explain a decision.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// The sidecar: mutual TLS between workloads (transparent or explicit mode).
    Proxy(Box<cli::proxy::ProxyArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own summary; its expected refusals need no warnings.
    // rustls warns on every client that sends an IP address as SNI (wrk,
    // some SDKs); harmless for ward, so not logged by default.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info,rustls::msgs=error"
    };
    init_logging(cli.log_format, default_level);
    // One worker is the common sidecar sizing: a current-thread runtime
    // then runs every task on this thread, with no work-stealing
    // bookkeeping and no wake-ups handed between threads.
    let mut builder = match cli.workers {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ca { command } => cli::ca::run(command).await,
            Command::Demo(args) => cli::demo::run(args).await,
            Command::DemoApp { app } => cli::demo_app::run(app).await,
            Command::Init(args) => cli::init::run(args),
            Command::Inject(args) => cli::inject::run(args),
            Command::Injector(args) => cli::injector::run(args).await,
            Command::Proxy(args) => cli::proxy::run(*args).await,
            Command::Policy { command } => cli::policy::run(command),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
