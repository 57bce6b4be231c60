//! Which webhook targets may be called: the guard against server-side request forgery.
//!
//! Only `http`/`https` URLs with a host and no credentials. Unless `webhook.allowPrivateTargets`
//! is on, an address that reaches this machine or its private network is refused: loopback,
//! private (RFC 1918), shared/CGNAT (100.64/10), link-local (169.254/16, which holds the cloud
//! metadata address 169.254.169.254; fe80::/10), unique-local (fc00::/7), site-local, unspecified,
//! multicast, broadcast and reserved ranges — including IPv6 forms that embed such an IPv4
//! address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`,
//! 6to4 `2002::/16`).
//!
//! URLs are parsed with the WHATWG parser the HTTP client uses, so `http://2130706433/` or
//! `http://0x7f.1/` are seen as 127.0.0.1 here exactly as they would be dialled.
//!
//! Two moments apply the rules: when a task is created ([`check_url`]: an IP literal or a
//! `localhost` name is refused at once) and at every delivery attempt, on the addresses a name
//! resolves to ([`check_addr`]), which are then the only addresses connected to, so a DNS answer
//! that changes between the check and the connection (rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a webhook URL or address is refused. `Display` is the rule, phrased to follow
/// "Field `webhook_url` ..." in an error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("must be an http or https URL")]
    NotHttp,
    #[error("must be a well-formed URL")]
    Malformed,
    #[error("must name a host")]
    NoHost,
    #[error("must not carry credentials")]
    Credentials,
    #[error("targets a {class} address ({addr}), which is refused unless webhook.allowPrivateTargets is true")]
    Blocked { addr: IpAddr, class: &'static str },
    #[error("targets this machine ({host}), which is refused unless webhook.allowPrivateTargets is true")]
    LocalName { host: String },
}

/// The form of a webhook URL: parsed, http(s), with a host, without credentials.
pub fn parse(raw: &str) -> Result<Url, Refusal> {
    let url = Url::parse(raw).map_err(|_| Refusal::Malformed)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    match url.host() {
        None => Err(Refusal::NoHost),
        Some(Host::Domain("")) => Err(Refusal::NoHost),
        Some(_) => Ok(url),
    }
}

/// The address a URL's host is, when it is an IP literal.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    }
}

/// `localhost` and its subdomains (RFC 6761), which always mean this machine.
pub fn is_local_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The check at task creation: the form, and (unless private targets are allowed) no blocked
/// IP literal and no `localhost`. Other names are checked when delivered, after resolution.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, Refusal> {
    let url = parse(raw)?;
    if allow_private {
        return Ok(url);
    }
    if let Some(ip) = literal_ip(&url) {
        check_addr(ip, false)?;
    } else if let Some(Host::Domain(d)) = url.host() {
        if is_local_name(d) {
            return Err(Refusal::LocalName { host: d.to_owned() });
        }
    }
    Ok(url)
}

/// The check of one address a delivery would connect to.
pub fn check_addr(addr: IpAddr, allow_private: bool) -> Result<(), Refusal> {
    match blocked_class(addr) {
        Some(class) if !allow_private => Err(Refusal::Blocked { addr, class }),
        _ => Ok(()),
    }
}

/// The kind of non-public address `addr` is, or `None` for an ordinary public address.
pub fn blocked_class(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    match (a, b) {
        (0, _) => Some("unspecified"),
        (127, _) => Some("loopback"),
        (10, _) | (192, 168) => Some("private"),
        (172, 16..=31) => Some("private"),
        (100, 64..=127) => Some("shared (CGNAT)"),
        (169, 254) => Some("link-local"),
        (224..=239, _) => Some("multicast"),
        _ if ip.is_broadcast() => Some("broadcast"),
        (240..=255, _) => Some("reserved"),
        _ => None,
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address: judged by that address, since that is what they reach.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let s = ip.segments();
    let low_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] {
        // `::a.b.c.d`, deprecated and never a legitimate public target.
        return Some(v4_class(low_v4).unwrap_or("IPv4-compatible"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_class(low_v4);
    }
    if s[0] == 0x2002 {
        let embedded = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return v4_class(embedded);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("unique-local"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn address_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("169.253.1.1", None),
            ("223.255.255.255", None),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.127.255.255", Some("shared (CGNAT)")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.0.1", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved")),
            // IPv6
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456:789a::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast")),
            // IPv6 forms embedding IPv4
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("::8.8.8.8", Some("IPv4-compatible")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:808:808::1", None),
        ];
        for (addr, want) in table {
            assert_eq!(blocked_class(ip(addr)), *want, "{addr}");
            assert_eq!(
                check_addr(ip(addr), false).is_ok(),
                want.is_none(),
                "{addr}"
            );
            assert!(check_addr(ip(addr), true).is_ok(), "{addr} when allowed");
        }
    }

    #[test]
    fn creation_refuses_private_literals_and_localhost() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:7f00:1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://10.0.0.8/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://localhost:3000/",
            "http://LOCALHOST./x",
            "http://api.localhost/x",
        ] {
            let got = check_url(url, false);
            assert!(
                matches!(
                    got,
                    Err(Refusal::Blocked { .. } | Refusal::LocalName { .. })
                ),
                "{url}: {got:?}"
            );
            assert!(check_url(url, true).is_ok(), "{url} when allowed");
        }
    }

    #[test]
    fn creation_accepts_public_literals_and_names() {
        for url in [
            "https://example.com/hook?x=1",
            "http://93.184.216.34:8080/",
            "https://[2606:4700:4700::1111]/",
            "https://hooks.localhost.example.com/",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn form_rules() {
        assert_eq!(parse("ftp://example.com/"), Err(Refusal::NotHttp));
        assert_eq!(parse("file:///etc/passwd"), Err(Refusal::NotHttp));
        assert_eq!(parse("not a url"), Err(Refusal::Malformed));
        assert_eq!(parse("http://"), Err(Refusal::Malformed));
        // Zone ids are not part of WHATWG URLs.
        assert_eq!(parse("http://[fe80::1%25eth0]/"), Err(Refusal::Malformed));
        assert_eq!(parse("http://u:p@example.com/"), Err(Refusal::Credentials));
        assert_eq!(parse("http://u@example.com/"), Err(Refusal::Credentials));
        assert!(parse("https://example.com").is_ok());
    }

    #[test]
    fn refusals_name_the_rule_and_the_switch() {
        let e = check_url("http://169.254.169.254/", false).expect_err("blocked");
        let text = e.to_string();
        assert!(text.contains("link-local"), "{text}");
        assert!(text.contains("169.254.169.254"), "{text}");
        assert!(text.contains("webhook.allowPrivateTargets"), "{text}");
    }
}
