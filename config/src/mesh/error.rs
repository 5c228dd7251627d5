//! Mesh-file errors. Each message is one line that starts with where the
//! problem is (`mesh.yaml:7:15:`), says what is wrong, and ends with what to
//! do (`(hint: ...)`), because the reader is an operator looking at a log
//! line after a ConfigMap change, not at the code.

use std::fmt;
use std::net::SocketAddr;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Error as YamlError, Location, MessageFormatter, UserMessageFormatter};

use super::raw::{MAX_ALIASES, MAX_DEPTH, MAX_NODES, MAX_REPLAYED_EVENTS, MAX_SCALAR_BYTES};
use crate::spiffe::SpiffeIdError;

/// Where in the mesh file a problem is: `file:line:column`, or just `file`
/// when no position is known (line and column are then 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// 1-based, in characters; 0 when unknown.
    pub column: u32,
}

impl Position {
    pub(super) fn file(file: &str) -> Self {
        Self {
            file: file.to_string(),
            line: 0,
            column: 0,
        }
    }

    pub(super) fn at(file: &str, location: Location) -> Self {
        Self {
            file: file.to_string(),
            line: clamp(location.line()),
            column: clamp(location.column()),
        }
    }
}

/// serde-saphyr counts in `u32` and widens to `u64`; narrowing back is lossless.
pub(super) fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Why a mesh file was refused. Every variant carries the file name, and a
/// line and column wherever one is known. `#[non_exhaustive]` so variants
/// can be added without breaking callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The file could not be opened or read.
    #[error(
        "{file}: cannot read the mesh file: {error} \
         (hint: check the path, and that the file is mounted and readable)"
    )]
    Read { file: String, error: std::io::Error },
    /// Over [`super::MAX_FILE_BYTES`]; refused before parsing.
    #[error(
        "{file}: the mesh file is larger than {limit} bytes \
         (hint: a mesh file lists services and is far smaller; check that the right file is mounted)"
    )]
    TooLarge { file: String, limit: usize },
    #[error("{file}: the mesh file is not UTF-8 text (hint: save it as UTF-8)")]
    NotUtf8 { file: String },
    /// Nothing but whitespace, comments and `---`.
    #[error(
        "{file}: the mesh file is empty \
         (hint: it needs at least `trust_domain:` and `services:`; see docs/mesh.md)"
    )]
    Empty { file: String },
    /// YAML syntax, or a value of the wrong shape (a list where a single
    /// value belongs, text where a port number belongs, ...).
    #[error("{at}: {message} (hint: {hint})")]
    Yaml {
        at: Position,
        message: String,
        hint: &'static str,
    },
    #[error(
        "{at}: unknown field {field:?}, expected one of {} (hint: {})",
        quoted(.expected),
        spelling_hint(.suggestion.as_deref(), "remove it or fix its spelling; field names are lowercase")
    )]
    UnknownField {
        at: Position,
        field: String,
        expected: Vec<String>,
        suggestion: Option<String>,
    },
    /// A value outside a fixed set, such as `protocol: udp`.
    #[error(
        "{at}: unknown value {value:?}, expected one of {} (hint: {})",
        quoted(.expected),
        spelling_hint(.suggestion.as_deref(), "use one of the listed values, in lowercase")
    )]
    UnknownValue {
        at: Position,
        value: String,
        expected: Vec<String>,
        suggestion: Option<String>,
    },
    /// The same key twice in one mapping: two services of one name, two
    /// `identity:` lines, ... YAML forbids it; parsers that keep the last one
    /// would let a stray line silently change an identity.
    #[error(
        "{at}: key {key:?} appears twice in the same mapping \
         (hint: YAML keys must be unique and ward will not guess which one you meant; \
         merge the two entries or rename one)"
    )]
    DuplicateKey { at: Position, key: String },
    #[error("{at}: missing field {field:?} (hint: add it; see docs/mesh.md for the schema)")]
    MissingField { at: Position, field: String },
    /// A resource budget was exceeded: nesting depth, alias expansion, text
    /// size, value count or document count.
    #[error(
        "{at}: the mesh file is too large or too complex: {what} \
         (hint: a mesh file is one YAML document of plain mappings and lists; \
         remove extra `---` documents, deep nesting and heavy use of aliases)"
    )]
    Limit { at: Position, what: String },
    #[error(
        "{at}: trust_domain: {error} \
         (hint: write the bare name, e.g. `cluster.local`, without `spiffe://`)"
    )]
    TrustDomain { at: Position, error: SpiffeIdError },
    /// Not a SPIFFE ID, not in `trust_domain`, or the trust domain's own ID.
    #[error(
        "{at}: service {service:?}: identity: {error} \
         (hint: identities look like spiffe://<trust_domain>/ns/<namespace>/sa/<serviceaccount>, \
         in the file's trust_domain)"
    )]
    Identity {
        at: Position,
        service: String,
        error: SpiffeIdError,
    },
    #[error(
        "{at}: service name {name:?} is not a DNS-1123 label \
         (hint: use 1-63 lowercase letters, digits and '-', starting and ending with a letter \
         or digit, e.g. `orders-v2`)"
    )]
    ServiceName { at: Position, name: String },
    #[error(
        "{at}: service {service:?} has no endpoints \
         (hint: list where its sidecars accept mesh connections, e.g. `endpoints: [10.1.0.7:15006]`)"
    )]
    NoEndpoints { at: Position, service: String },
    #[error(
        "{at}: service {service:?} has no ports \
         (hint: list its application ports, e.g. `ports: [{{port: 8080, protocol: http}}]`)"
    )]
    NoPorts { at: Position, service: String },
    #[error("{at}: service {service:?}: ports: port 0 is not a usable port (hint: use 1-65535)")]
    PortZero { at: Position, service: String },
    #[error(
        "{at}: service {service:?}: ports: port {port} is listed twice, first at line {first_line} \
         (hint: keep one entry per port)"
    )]
    DuplicatePort {
        at: Position,
        service: String,
        port: u16,
        first_line: u32,
    },
    /// Not `ip:port`: a hostname, no port, port 0, `0.0.0.0`, ...
    #[error("{at}: service {service:?}: endpoints: {endpoint:?} {reason} (hint: {hint})")]
    Endpoint {
        at: Position,
        service: String,
        endpoint: String,
        reason: &'static str,
        hint: &'static str,
    },
    /// The same `ip:port` twice, in one service or two.
    #[error(
        "{at}: service {service:?}: endpoints: {endpoint} is already listed by service {other:?} \
         at line {other_line} (hint: an endpoint belongs to exactly one service; remove one of the two)"
    )]
    DuplicateEndpoint {
        at: Position,
        service: String,
        endpoint: SocketAddr,
        other: String,
        other_line: u32,
    },
    /// Two services on one IP address claim the same port, so
    /// [`super::MeshConfig::by_destination`] could not tell them apart.
    #[error(
        "{at}: service {service:?}: a connection to {destination} would match both service \
         {other:?} and this one (hint: services that share an IP address need distinct ports \
         and endpoints)"
    )]
    AmbiguousDestination {
        at: Position,
        service: String,
        other: String,
        destination: SocketAddr,
    },
    // ---- policy (docs/policy.md) ----
    #[error(
        "{at}: role name {name:?} is not a DNS-1123 label \
         (hint: use 1-63 lowercase letters, digits and '-', starting and ending with a letter \
         or digit, e.g. `frontend`)"
    )]
    RoleName { at: Position, name: String },
    #[error(
        "{at}: role {role:?} has no members \
         (hint: list the SPIFFE IDs in it, e.g. `- spiffe://cluster.local/ns/shop/sa/web`, \
         or remove the role)"
    )]
    EmptyRole { at: Position, role: String },
    /// Not a SPIFFE ID, not in `trust_domain`, or the trust domain's own ID.
    #[error(
        "{at}: role {role:?}: member {member:?}: {error} \
         (hint: members look like spiffe://<trust_domain>/ns/<namespace>/sa/<serviceaccount>, \
         or end in `/*` for every service account of a namespace)"
    )]
    RoleMember {
        at: Position,
        role: String,
        member: String,
        /// Boxed to keep `MeshError` small.
        error: Box<SpiffeIdError>,
    },
    #[error(
        "{at}: role {role:?}: member {member:?}: `*` may only stand for a whole last segment \
         (hint: write exact IDs, or end the ID in `/*`, e.g. spiffe://cluster.local/ns/shop/sa/*; \
         wildcards inside a segment or before the last one are not supported)"
    )]
    WildcardPlacement {
        at: Position,
        role: String,
        member: String,
    },
    #[error(
        "{at}: role {role:?}: member {member:?} matches too much: a wildcard needs at least two \
         path segments before `/*` (hint: name the namespace, e.g. \
         spiffe://cluster.local/ns/shop/sa/*; a trust-domain-wide role is too broad to write by accident)"
    )]
    WildcardTooBroad {
        at: Position,
        role: String,
        member: String,
    },
    #[error(
        "{at}: {kind} rule #{index} has no name \
         (hint: add `name: <something-unique>`; logs and `ward policy explain` report rules by name)"
    )]
    RuleNameMissing {
        at: Position,
        kind: &'static str,
        index: usize,
    },
    #[error(
        "{at}: rule name {name:?} is already taken by the {first_kind} rule at line {first_line} \
         (hint: rule names must be unique across allow and deny; rename one)"
    )]
    DuplicateRuleName {
        at: Position,
        name: String,
        first_kind: &'static str,
        first_line: u32,
    },
    #[error(
        "{at}: rule {rule:?} has no `from` roles \
         (hint: list the roles whose members the rule applies to, e.g. `from: [frontend]`)"
    )]
    EmptyFrom { at: Position, rule: String },
    #[error(
        "{at}: rule {rule:?}: role {role:?} is not defined (hint: {})",
        spelling_hint(.suggestion.as_deref(), "define it under `roles:`, or fix the name")
    )]
    UnknownRole {
        at: Position,
        rule: String,
        role: String,
        suggestion: Option<String>,
    },
    #[error(
        "{at}: rule {rule:?}: to: service {service:?} is not defined (hint: {})",
        spelling_hint(
            .suggestion.as_deref(),
            "name a service under `services:`, or write `role:<name>` to target a role"
        )
    )]
    UnknownService {
        at: Position,
        rule: String,
        service: String,
        suggestion: Option<String>,
    },
    #[error("{at}: rule {rule:?}: ports: port 0 is not a usable port (hint: use 1-65535)")]
    RulePortZero { at: Position, rule: String },
    #[error(
        "{at}: rule {rule:?}: ports: service {service:?} has no port {port} \
         (hint: it declares {declared}; list only those, or add the port to the service)"
    )]
    UndeclaredPort {
        at: Position,
        rule: String,
        service: String,
        port: u16,
        declared: String,
    },
    #[error(
        "{at}: rule {rule:?}: http conditions on port {port}, which service {service:?} \
         declares `protocol: tcp` (hint: the proxy never parses HTTP on tcp ports; drop `http:`, \
         drop the port, or declare the port `http` or `detect`)"
    )]
    HttpOnTcpPort {
        at: Position,
        rule: String,
        service: String,
        port: u16,
    },
    #[error(
        "{at}: rule {rule:?}: http conditions, but every port of service {service:?} is \
         `protocol: tcp` (hint: the proxy never parses HTTP on tcp ports; drop `http:` or \
         declare a port `http` or `detect`)"
    )]
    HttpOnTcpService {
        at: Position,
        rule: String,
        service: String,
    },
    #[error(
        "{at}: rule {rule:?}: http method {method:?} is not an uppercase token \
         (hint: write methods in uppercase letters only, e.g. GET, POST, DELETE)"
    )]
    Method {
        at: Position,
        rule: String,
        method: String,
    },
    /// A path pattern that is not written normalized; `owner` is `rule "x"`
    /// or `probe on port 8080`.
    #[error(
        "{at}: {owner}: path {path:?} {reason} (hint: write normalized paths starting with `/`, \
         e.g. `/status`, or a prefix ending in `/*`, e.g. `/api/*`)"
    )]
    Path {
        at: Position,
        owner: String,
        path: String,
        reason: &'static str,
    },
    #[error("{at}: probes: port 0 is not a usable port (hint: use 1-65535)")]
    ProbePortZero { at: Position },
    #[error(
        "{at}: probes: port {port} is listed twice, first at line {first_line} \
         (hint: keep one entry per port and list all its paths there)"
    )]
    DuplicateProbePort {
        at: Position,
        port: u16,
        first_line: u32,
    },
}

/// `"a", "b", "c"`: quoted so an empty or odd name stays visible.
fn quoted(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    names.join(", ")
}

fn spelling_hint(suggestion: Option<&str>, otherwise: &str) -> String {
    match suggestion {
        Some(s) => format!("did you mean {s:?}?"),
        None => otherwise.to_string(),
    }
}

/// The expected name closest to `got`, if it is close enough to be a typo:
/// a case difference, or one edit (two for names of five letters or more,
/// so `udp` is not "corrected" to `tcp`).
pub(super) fn suggest(got: &str, expected: &[String]) -> Option<String> {
    let got_lower = got.to_lowercase();
    expected
        .iter()
        .map(|e| (typo_distance(&got_lower, e), e))
        .filter(|(d, e)| *d <= if e.chars().count() >= 5 { 2 } else { 1 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.clone())
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent swaps, so
/// `endpionts` is one edit from `endpoints`. Inputs here are short names.
fn typo_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The error serde-saphyr actually raised, under alias and snippet wrappers.
fn innermost(mut err: &YamlError) -> &YamlError {
    while let YamlError::AliasError { error, .. } | YamlError::WithSnippet { error, .. } = err {
        err = error;
    }
    err
}

/// Translates a serde-saphyr error into operator terms, keeping its position.
pub(super) fn from_yaml(err: &YamlError, file: &str) -> MeshError {
    let at = match err.location() {
        Some(location) if location != Location::UNKNOWN => Position::at(file, location),
        _ => Position::file(file),
    };
    let limit = |what: String| MeshError::Limit {
        at: at.clone(),
        what,
    };
    let yaml = |message: &str, hint: &'static str| MeshError::Yaml {
        at: at.clone(),
        message: message.to_string(),
        hint,
    };
    let inner = innermost(err);
    match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let expected: Vec<String> = expected.iter().map(|e| e.to_string()).collect();
            MeshError::UnknownField {
                suggestion: suggest(field, &expected),
                at,
                field: field.clone(),
                expected,
            }
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let expected: Vec<String> = expected.iter().map(|e| e.to_string()).collect();
            MeshError::UnknownValue {
                suggestion: suggest(variant, &expected),
                at,
                value: variant.clone(),
                expected,
            }
        }
        YamlError::DuplicateMappingKey { key, .. } => MeshError::DuplicateKey {
            at,
            key: key.clone().unwrap_or_else(|| "(complex key)".to_string()),
        },
        YamlError::SerdeMissingField { field, .. } => MeshError::MissingField {
            at,
            field: field.to_string(),
        },
        YamlError::Budget { breach, .. } => limit(describe_breach(breach)),
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => limit(format!(
            "aliases expand to more than {MAX_REPLAYED_EVENTS} YAML events"
        )),
        YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. } => {
            limit("aliases are nested too deeply".to_string())
        }
        YamlError::MultipleDocuments { .. } => limit("more than one YAML document".to_string()),
        YamlError::Eof { .. } => yaml(
            "unexpected end of file",
            "the file looks cut short: check for an unclosed bracket or quote",
        ),
        YamlError::Unexpected { expected, .. } => match *expected {
            "mapping start" => yaml(
                "expected a mapping (`key: value` lines) here",
                "indent the keys under their parent; write `{}` for an empty mapping",
            ),
            "sequence start" => yaml(
                "expected a list (`- item` lines) here",
                "write one `- item` line per entry, or `[a, b]`",
            ),
            "string scalar" | "scalar" => yaml(
                "expected a single value here, not a list or mapping",
                "quote values that start with `[` or `{`, e.g. IPv6 endpoints: \"[fd00::7]:15006\"",
            ),
            other => yaml(
                &format!("expected {other}"),
                "check the indentation and the shape of this entry against docs/mesh.md",
            ),
        },
        YamlError::InvalidScalar { ty, .. } if ty.starts_with('u') => yaml(
            "expected a port number",
            "write a whole number from 1 to 65535, without quotes or units",
        ),
        YamlError::NullIntoString { .. } => yaml(
            "a value is missing here",
            "write a value after the `:` or `-`, or remove the line",
        ),
        YamlError::UnsupportedTag { tag, .. } | YamlError::TaggedStructFieldName { tag, .. } => {
            MeshError::Yaml {
                at,
                message: format!("YAML tag {tag:?} is not supported"),
                hint: "remove the tag; the mesh file uses plain values only",
            }
        }
        _ => {
            let message = UserMessageFormatter.format_message(inner).into_owned();
            // The parser reports nested flow collections (`[[[...`) past
            // its limit this way rather than as a budget breach.
            if message.contains("recursion limit") {
                return limit(format!("nesting deeper than {MAX_DEPTH} levels"));
            }
            MeshError::Yaml {
                at,
                message,
                hint: "fix the YAML at this position: indent with spaces, not tabs, \
                       and quote values containing `: `, ` #`, `[` or `{`",
            }
        }
    }
}

fn describe_breach(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!("nesting deeper than {MAX_DEPTH} levels"),
        BudgetBreach::Documents { .. } => "more than one YAML document (`---`)".to_string(),
        BudgetBreach::Nodes { .. } => format!("more than {MAX_NODES} YAML values"),
        BudgetBreach::Aliases { .. } => format!("more than {MAX_ALIASES} aliases (`*name`)"),
        BudgetBreach::ScalarBytes { .. } => {
            format!("more than {MAX_SCALAR_BYTES} bytes of text, counting every use of an alias")
        }
        other => format!("YAML limit exceeded: {other:?}"),
    }
}
