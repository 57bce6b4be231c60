//! Which limit applies to a caller, from the live config, and under which key it is counted.

use std::net::IpAddr;
use std::time::Duration;

use super::gcra::Policy;
use crate::config::Config;

/// The limit for the key named `key_name` (`None`: anonymous): `rateLimit.*`, with the key's
/// `auth.apiKeys[].rateLimit` overriding either number. `None` when rate limiting is off.
pub fn policy_for(config: &Config, key_name: Option<&str>) -> Option<Policy> {
    let global = &config.rate_limit;
    if !global.enabled {
        return None;
    }
    let over = key_name
        .and_then(|name| config.auth.api_keys.iter().find(|k| k.name == name))
        .and_then(|k| k.rate_limit.as_ref());
    let window_ms = over.and_then(|o| o.window_ms).unwrap_or(global.window_ms);
    let max = over
        .and_then(|o| o.max_requests)
        .unwrap_or(global.max_requests);
    Some(Policy::new(max, Duration::from_millis(window_ms)))
}

/// The counter a caller is limited under: its API key, or its IP when anonymous. The prefixes
/// keep a key named like an address from sharing an IP's counter.
pub fn limiter_key(key_name: Option<&str>, ip: Option<IpAddr>) -> String {
    match (key_name, ip) {
        (Some(name), _) => format!("key:{name}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        let mut doc: serde_json::Value =
            serde_json::from_str(crate::config::DEFAULT_JSON).expect("defaults");
        crate::config::merge::merge_patch(&mut doc, &extra);
        Config::from_merged(doc).expect("config")
    }

    #[test]
    fn overrides_apply_per_key_and_number() {
        let c = config(serde_json::json!({
            "rateLimit": {"windowMs": 60000, "maxRequests": 3},
            "auth": {"apiKeys": [
                {"name": "a", "key": "key-aaaaaaaa", "rateLimit": {"maxRequests": 10}},
                {"name": "b", "key": "key-bbbbbbbb", "rateLimit": {"windowMs": 1000}},
                {"name": "c", "key": "key-cccccccc"}
            ]}
        }));
        let secs = Duration::from_secs;
        assert_eq!(policy_for(&c, Some("a")), Some(Policy::new(10, secs(60))));
        assert_eq!(policy_for(&c, Some("b")), Some(Policy::new(3, secs(1))));
        assert_eq!(policy_for(&c, Some("c")), Some(Policy::new(3, secs(60))));
        assert_eq!(policy_for(&c, None), Some(Policy::new(3, secs(60))));
        let off = config(serde_json::json!({"rateLimit": {"enabled": false}}));
        assert_eq!(policy_for(&off, Some("a")), None);
    }

    #[test]
    fn keys_and_addresses_never_share_a_counter() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(limiter_key(Some("a"), Some(ip)), "key:a");
        assert_eq!(limiter_key(None, Some(ip)), "ip:10.0.0.1");
        assert_ne!(
            limiter_key(Some("10.0.0.1"), None),
            limiter_key(None, Some(ip))
        );
    }
}
