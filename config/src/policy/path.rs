//! Request path normalization for L7 policy. The normalized path is both
//! what the policy checks and what is forwarded to the app, so the two can
//! never disagree about which resource was asked for.
//!
//! Steps (RFC 3986 §6.2.2, applied once):
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded; other percent-encodings are kept, with uppercase hex;
//! 2. runs of `/` are merged;
//! 3. dot segments (`.`, `..`) are removed (`..` never climbs above `/`).
//!
//! Refused (the proxy answers 400) rather than guessed, because servers
//! disagree on them: an encoded `/` (`%2F`), `\` or `%5C`, an encoded `%`
//! (`%25`, a double-encoding vector), `;` path parameters (Java servers strip
//! them, others do not), `%00` or any control character, a
//! malformed escape, and a path not starting with `/`.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded '/' (%2F), which servers interpret differently")]
    EncodedSlash,
    #[error("the path contains a backslash or %5C, which servers interpret differently")]
    Backslash,
    #[error("the path contains an encoded '%' (%25), a double-encoding attempt")]
    EncodedPercent,
    #[error("the path contains a control character or %00")]
    Control,
    #[error("the path contains a malformed percent-encoding")]
    BadEscape,
    #[error("the path contains ';' path parameters, which some servers strip and others do not")]
    PathParameters,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes the path part of a request target (no query string).
pub fn normalize(path: &str) -> Result<String, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Step 1: decode unreserved escapes, refuse ambiguous ones.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).and_then(|&h| hex(h)),
                    raw.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = hi << 4 | lo;
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    b'%' => return Err(PathError::EncodedPercent),
                    b';' => return Err(PathError::PathParameters),
                    c if c < 0x20 || c == 0x7f => return Err(PathError::Control),
                    c if is_unreserved(c) => decoded.push(c as char),
                    c => decoded.push_str(&format!("%{c:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameters),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            _ => {
                // Multi-byte UTF-8 is copied through unchanged (the input is a &str).
                let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
                decoded.push_str(&path[i..i + ch_len]);
                i += ch_len;
                continue;
            }
        }
    }
    // Steps 2 and 3: split on '/', dropping empty and '.' segments, popping on '..'.
    let trailing_slash = decoded.len() > 1
        && (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/.."));
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_the_unambiguous_forms() {
        let cases = [
            ("/", "/"),
            ("/api/orders", "/api/orders"),
            ("/api/orders/", "/api/orders/"),
            ("//api///orders", "/api/orders"),
            ("/api/./orders", "/api/orders"),
            ("/api/v1/../orders", "/api/orders"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api/..", "/"),
            ("/api/orders/.", "/api/orders/"),
            ("/%61pi/%7Eme", "/api/~me"),
            ("/%2e%2e/admin", "/admin"),
            ("/api/%2E/x", "/api/x"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_the_ambiguous_forms() {
        let cases = [
            ("api", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/api%2Fadmin", PathError::EncodedSlash),
            ("/api%2fadmin", PathError::EncodedSlash),
            ("/api\\admin", PathError::Backslash),
            ("/api%5Cadmin", PathError::Backslash),
            ("/api%252Fadmin", PathError::EncodedPercent),
            ("/api%00", PathError::Control),
            ("/api\u{1}", PathError::Control),
            ("/api%", PathError::BadEscape),
            ("/api%4", PathError::BadEscape),
            ("/api%zz", PathError::BadEscape),
            ("/admin;x/users", PathError::PathParameters),
            ("/..;/admin", PathError::PathParameters),
            ("/admin%3bx", PathError::PathParameters),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for input in ["//a/./b/../c/", "/%7e/x", "/a%20b", "/x/..", "/"] {
            let once = normalize(input).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{input}");
        }
    }
}
