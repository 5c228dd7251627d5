//! The audit log: one JSON line per issuance decision, to a file (append-only,
//! 0600) and/or stdout. A certificate is handed out only after its audit line
//! was written: if the log cannot be written, issuance fails closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One decision. `result` is `issued` or `denied`.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: OffsetDateTime,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The identity the caller was authenticated as (from its credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a str>,
    /// The identity the CSR asked for, when it differs or was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<&'a str>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_rfc3339"
    )]
    pub not_after: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<&'a str>,
    pub client: SocketAddr,
}

fn rfc3339<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    s.serialize_str(&text)
}

fn opt_rfc3339<S: serde::Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Where audit lines go.
#[derive(Debug)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
    stdout: bool,
}

impl AuditLog {
    /// Opens (creating 0600, appending) `path` if given; `stdout` also echoes
    /// each line to standard output.
    pub fn open(path: Option<&Path>, stdout: bool) -> io::Result<Self> {
        let file = path
            .map(|p| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
            })
            .transpose()?
            .map(Mutex::new);
        Ok(Self { file, stdout })
    }

    /// A log that records nothing (used by benchmarks and the demo's client).
    pub fn disabled() -> Self {
        Self {
            file: None,
            stdout: false,
        }
    }

    /// Writes one line; each line is one `write` call on an O_APPEND file, so
    /// concurrent writers never interleave within a line.
    pub fn record(&self, rec: &AuditRecord<'_>) -> io::Result<()> {
        if self.file.is_none() && !self.stdout {
            return Ok(());
        }
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        if let Some(file) = &self.file {
            let mut f = file
                .lock()
                .map_err(|_| io::Error::other("audit log lock poisoned"))?;
            f.write_all(&line)?;
        }
        if self.stdout {
            io::stdout().lock().write_all(&line)?;
        }
        Ok(())
    }
}
