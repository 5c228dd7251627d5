//! An RFC 6902 JSON Patch from two JSON documents, for the webhook's answer:
//! the API server applies it to the Pod it sent, so the patch must turn
//! exactly that Pod into `ward::inject`'s result.
//!
//! Deliberately simple: objects are compared key by key (`add` for a new
//! key, `remove` for a gone one, recursion for a changed one) and anything
//! else that differs, arrays included, is `replace`d whole. Injection
//! inserts at the front of `initContainers`, so an element-wise array diff
//! would save little and would be the hard part to get right; whole arrays
//! cost a few KiB and have exactly one meaning. Keys are escaped per
//! RFC 6901 (`~` → `~0`, `/` → `~1`), which annotation names need.

use serde_json::{Map, Value, json};

/// The operations that turn `from` into `to` (empty when they are equal).
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), from, to, &mut ops);
    ops
}

fn diff_at(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => diff_maps(path, from, to, ops),
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

fn diff_maps(
    path: &mut String,
    from: &Map<String, Value>,
    to: &Map<String, Value>,
    ops: &mut Vec<Value>,
) {
    let len = path.len();
    for key in from.keys().filter(|key| !to.contains_key(*key)) {
        push_token(path, key);
        ops.push(json!({"op": "remove", "path": path.as_str()}));
        path.truncate(len);
    }
    for (key, value) in to {
        push_token(path, key);
        match from.get(key) {
            Some(old) => diff_at(path, old, value, ops),
            None => ops.push(json!({"op": "add", "path": path.as_str(), "value": value})),
        }
        path.truncate(len);
    }
}

/// Appends `/key` to a JSON pointer, escaped per RFC 6901.
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}
