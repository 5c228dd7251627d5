//! `ward policy check FILE...` and `ward policy explain FILE ...`: the
//! operator's answers to "is this file valid?" and "would X reach Y, and by
//! which rule (or why not)?".

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ward_config::MeshConfig;
use ward_config::SpiffeId;
use ward_config::policy::engine::{Condition, Engine, HttpRequest, Request, RuleKind, Verdict};
use ward_config::policy::path::normalize;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate mesh/policy files: print errors and warnings; non-zero exit on errors.
    Check(CheckArgs),
    /// Decide one connection or request and say which rule decided, or why not.
    Explain(ExplainArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ExplainArgs {
    pub file: PathBuf,
    /// The caller's SPIFFE ID.
    #[arg(long)]
    pub from: String,
    /// The destination service.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    /// HTTP method (with --path: decide a request, not just the connection).
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    #[arg(long, requires = "method")]
    pub path: Option<String>,
}

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let mut failed = 0;
    for file in &args.files {
        match MeshConfig::load_with_warnings(file) {
            Ok((mesh, warnings)) => {
                if let Err(e) = Engine::compile(&mesh.policy, &mesh.services) {
                    failed += 1;
                    println!("error: {}: {e}", file.display());
                    continue;
                }
                for w in &warnings {
                    println!("warning: {w}");
                }
                let p = &mesh.policy;
                println!(
                    "{}: ok ({} services, {} roles, {} allow and {} deny rules, {} probes, mode {}; {} warnings)",
                    file.display(),
                    mesh.services.len(),
                    p.roles.len(),
                    p.allow.len(),
                    p.deny.len(),
                    p.probes.len(),
                    if p.mode == ward_config::policy::Mode::Audit {
                        "audit"
                    } else {
                        "enforce"
                    },
                    warnings.len()
                );
            }
            Err(e) => {
                failed += 1;
                println!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files have errors", args.files.len());
    }
    Ok(())
}

fn explain(args: ExplainArgs) -> Result<()> {
    let mesh = MeshConfig::load(&args.file)?;
    let from = SpiffeId::parse(&args.from).context("--from")?;
    if mesh.service(&args.to).is_none() {
        bail!("service {:?} is not in {}", args.to, args.file.display());
    }
    let method = args.method.as_deref().map(str::to_ascii_uppercase);
    let path = match &args.path {
        Some(p) => match normalize(p) {
            Ok(n) => Some(n),
            Err(e) => {
                println!("decision: deny (400 before any rule): {e}");
                return Ok(());
            }
        },
        None => None,
    };
    let http = method
        .as_deref()
        .zip(path.as_deref())
        .map(|(method, path)| HttpRequest { method, path });
    let engine = Engine::compile(&mesh.policy, &mesh.services)?;
    let req = Request {
        from: &from,
        service: &args.to,
        port: args.port,
        http,
    };
    let decision = engine.decide(&req);
    println!("decision: {}", decision.verdict.as_str());
    match decision.rule {
        Some(rule) => println!("rule: {} ({:?} rule at {})", rule.name, rule.kind, rule.at),
        None => println!("rule: none matched (default deny)"),
    }
    if let Some(p) = path.as_ref().filter(|p| Some(*p) != args.path.as_ref()) {
        println!("path: checked and forwarded as {p}");
    }
    if decision.requires_http {
        println!(
            "note: the connection is admitted only for HTTP requests the rule allows; give --method and --path to decide one"
        );
    }
    if decision.verdict != Verdict::Allow {
        println!("nearest rules:");
        for (rule, failed) in engine.explain(&req).iter().take(3) {
            let kind = if rule.kind == RuleKind::Allow {
                "allow"
            } else {
                "deny"
            };
            let why = if failed.is_empty() {
                "matches".to_string()
            } else {
                format!(
                    "fails on {}",
                    failed.iter().map(condition).collect::<Vec<_>>().join(", ")
                )
            };
            println!("  {kind} {} ({}): {why}", rule.name, rule.at);
        }
    }
    Ok(())
}

fn condition(c: &Condition) -> &'static str {
    match c {
        Condition::From => "from (the caller is in none of its roles)",
        Condition::To => "to (another service)",
        Condition::Port => "ports",
        Condition::Method => "http.methods",
        Condition::Path => "http.paths",
    }
}
