//! JSON merging and key checks, pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

/// RFC 7396 JSON Merge Patch: objects merge recursively, `null` removes a key, anything else
/// replaces. Used to lay a user's file over the defaults and for `PATCH /api/config`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Lay `user` over `defaults` where a user's explicit `null` keeps the key with a null value
/// (a nullable key such as `redisUrl: null` means "none", not "default"), then return the result.
pub fn overlay(defaults: &Value, user: &Value) -> Value {
    match (defaults, user) {
        (Value::Object(d), Value::Object(u)) => {
            let mut out = d.clone();
            for (key, uv) in u {
                let merged = match d.get(key) {
                    Some(dv) if dv.is_object() && uv.is_object() && !is_free_map(key) => {
                        overlay(dv, uv)
                    }
                    _ => uv.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        _ => user.clone(),
    }
}

/// Objects whose keys are the user's own (not config keys): never checked, replaced whole.
fn is_free_map(key: &str) -> bool {
    matches!(key, "claudeEnv")
}

/// Dotted paths of keys in `user` that `defaults` does not know. Free maps (`claudeEnv`) and
/// arrays (`auth.apiKeys`, checked by their own type) are not descended into.
pub fn unknown_keys(defaults: &Value, user: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(defaults, user, "", &mut out);
    out
}

fn walk(defaults: &Value, user: &Value, prefix: &str, out: &mut Vec<String>) {
    let (Value::Object(d), Value::Object(u)) = (defaults, user) else {
        return;
    };
    for (key, uv) in u {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match d.get(key) {
            None => out.push(path),
            Some(dv) if !is_free_map(key) => walk(dv, uv, &path, out),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3]}));
        assert_eq!(doc, json!({"a": [3]}));
    }

    #[test]
    fn overlay_keeps_explicit_nulls_and_nested_defaults() {
        let d = json!({"x": 1, "n": "v", "q": {"a": 1, "b": 2}, "claudeEnv": {"K": "1"}});
        let u = json!({"n": null, "q": {"b": 5}, "claudeEnv": {"J": "2"}});
        assert_eq!(
            overlay(&d, &u),
            json!({"x": 1, "n": null, "q": {"a": 1, "b": 5}, "claudeEnv": {"J": "2"}})
        );
    }

    #[test]
    fn unknown_keys_are_listed_with_paths() {
        let d = json!({"port": 1, "taskQueue": {"concurrency": 3}, "claudeEnv": {}});
        let u = json!({"prot": 1, "taskQueue": {"concurency": 2}, "claudeEnv": {"ANY": "x"}});
        assert_eq!(unknown_keys(&d, &u), vec!["prot", "taskQueue.concurency"]);
    }
}
