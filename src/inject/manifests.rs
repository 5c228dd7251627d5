//! `ward inject`'s input and output: a YAML stream of Kubernetes manifests
//! (`---`-separated documents, `kind: List` included), each object passed
//! through [`inject`](super::inject) and written back in order.
//!
//! Parsed with serde-saphyr into `serde_json::Value` (the type a webhook
//! receives too) under explicit budgets, since manifests may come from
//! anywhere; YAML 1.1 scalars (`0644`, `yes`) resolve as Kubernetes' own
//! YAML library resolves them. Comments, anchors and quoting style are not
//! kept; keys keep their order.

use serde_json::Value;
use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

use super::{Config, InjectError, Outcome, inject};

/// Input larger than this is refused before parsing.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;
/// Nesting deeper than this is refused (CRDs with big schemas stay well
/// below); it also bounds recursion when building and dropping values.
pub const MAX_DEPTH: usize = 128;
/// Enough for MAX_DEPTH with a wide margin; reserved, not committed.
const STACK_BYTES: usize = 64 * 1024 * 1024;
const MAX_DOCUMENTS: usize = 10_000;
const MAX_NODES: usize = 2_000_000;
const MAX_ALIASES: usize = 1_000;
const MAX_REPLAYED_EVENTS: usize = 100_000;

/// The injected stream and what happened to each object.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub yaml: String,
    pub notes: Vec<Note>,
}

/// One object injected or skipped, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub place: Place,
    pub object: String,
    pub message: String,
    /// True when the operator probably expected something else.
    pub warning: bool,
}

/// Where an object is in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// 1-based, counting every document in the stream (empty ones too).
    pub document: usize,
    pub line: usize,
    /// 1-based position in a `kind: List`'s `items`.
    pub item: Option<usize>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {} (line {})", self.document, self.line)?;
        if let Some(item) = self.item {
            write!(f, ", List item {item}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("input is larger than {MAX_INPUT_BYTES} bytes; split it")]
    TooLarge,
    #[error("document {document}, line {line}, column {column}: {message}")]
    Yaml {
        document: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid YAML: {0}")]
    YamlUnplaced(String),
    /// The message already says what is wrong, so `error` is not a
    /// `source`: error chains would print it twice.
    #[error("{place}: {object}: {error}")]
    Object {
        place: Place,
        object: String,
        error: Box<InjectError>,
    },
    #[error("cannot start the injection thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot write the injected YAML: {0}")]
    Write(#[from] serde_saphyr::SerializeError),
}

/// Injects every object of a YAML stream; fails on the first error, so that
/// nothing half-injected is ever written.
pub fn inject_manifests(config: &Config, text: &str) -> Result<Injected, ManifestError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(ManifestError::TooLarge);
    }
    // Parsing, building, writing and dropping a value recurse once per
    // nesting level, at up to tens of KiB a level in debug builds: more than
    // a test thread or a tokio worker has. A thread of our own with a known
    // stack makes MAX_DEPTH safe wherever this is called from.
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("ward-inject".to_string())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || inject_stream(config, text))
            .map_err(ManifestError::Thread)?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn inject_stream(config: &Config, text: &str) -> Result<Injected, ManifestError> {
    let documents: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(text, options())
        .map_err(|e| yaml_error(text, &e))?;
    let mut notes = Vec::new();
    let mut out = Vec::with_capacity(documents.len());
    for document in documents {
        let line = document.referenced.line() as usize;
        let place = Place {
            document: document_at(text, line),
            line,
            item: None,
        };
        out.push(inject_document(config, document.value, place, &mut notes)?);
    }
    Ok(Injected {
        yaml: serde_saphyr::to_string_multiple(&out)?,
        notes,
    })
}

/// One document: an object, or a `kind: List` whose items are objects.
fn inject_document(
    config: &Config,
    mut document: Value,
    place: Place,
    notes: &mut Vec<Note>,
) -> Result<Value, ManifestError> {
    let is_list = document.get("kind").and_then(Value::as_str) == Some("List")
        && document.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if is_list && let Some(Value::Array(items)) = document.get_mut("items") {
        for (i, item) in items.iter_mut().enumerate() {
            let place = Place {
                item: Some(i + 1),
                ..place
            };
            *item = inject_object(config, std::mem::take(item), place, notes)?;
        }
        return Ok(document);
    }
    inject_object(config, document, place, notes)
}

fn inject_object(
    config: &Config,
    object: Value,
    place: Place,
    notes: &mut Vec<Note>,
) -> Result<Value, ManifestError> {
    let name = describe(&object);
    let mut note = |message: String, warning: bool| {
        notes.push(Note {
            place,
            object: name.clone(),
            message,
            warning,
        })
    };
    match inject(config, &object) {
        Ok(Outcome::Injected {
            object: injected,
            warnings,
        }) => {
            note("injected".to_string(), false);
            for warning in warnings {
                note(warning, true);
            }
            Ok(injected)
        }
        Ok(Outcome::Unchanged) => {
            note("already injected; unchanged".to_string(), false);
            Ok(object)
        }
        Ok(Outcome::Skipped(reason)) => {
            if reason != super::SkipReason::NotAWorkload {
                note(format!("skipped: {reason}"), reason.is_warning());
            }
            Ok(object)
        }
        Err(error) => Err(ManifestError::Object {
            place,
            object: name.clone(),
            error: Box::new(error),
        }),
    }
}

/// `Deployment shop/web`, as kubectl names objects.
fn describe(object: &Value) -> String {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let kind = text("/kind").unwrap_or("object");
    let name = text("/metadata/name")
        .map(str::to_string)
        .or_else(|| text("/metadata/generateName").map(|prefix| format!("{prefix}*")))
        .unwrap_or_else(|| "(unnamed)".to_string());
    match text("/metadata/namespace") {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS,
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_total_scalar_bytes: MAX_INPUT_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        // Kubernetes reads manifests as YAML 1.1: `mode: 0644` is octal.
        legacy_octal_numbers: true,
        // `!include` and application tags mean nothing to Kubernetes.
        reject_unsupported_tags: true,
        emit_comments: false,
        with_snippet: false,
    }
}

fn yaml_error(text: &str, error: &serde_saphyr::Error) -> ManifestError {
    let message = error.to_string();
    match error.location().filter(|l| *l != Location::UNKNOWN) {
        Some(at) => {
            let (line, column) = (at.line() as usize, at.column() as usize);
            let suffix = format!(" at line {line}, column {column}");
            ManifestError::Yaml {
                document: document_at(text, line),
                line,
                column,
                message: message
                    .strip_suffix(&suffix)
                    .unwrap_or(&message)
                    .to_string(),
            }
        }
        None => ManifestError::YamlUnplaced(message),
    }
}

/// The 1-based number of the document that holds `line`, counting `---`
/// and `...` markers the way a reader of the file would (a leading `---`
/// opens document 1; empty documents count).
fn document_at(text: &str, line: usize) -> usize {
    let is_marker = |l: &str, marker: &str| {
        l.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    let mut document = 1;
    let mut has_content = false;
    let mut ended = false;
    for text_line in text.lines().take(line) {
        if is_marker(text_line, "---") {
            if has_content {
                document += 1;
            }
            has_content = true;
            ended = false;
        } else if is_marker(text_line, "...") {
            ended = true;
        } else {
            let trimmed = text_line.trim_start();
            let blank = trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%');
            if !blank {
                if ended {
                    document += 1;
                    ended = false;
                }
                has_content = true;
            }
        }
    }
    document
}
