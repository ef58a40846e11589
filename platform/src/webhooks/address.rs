//! Where webhook requests may go: never to loopback, private, link-local
//! or other non-global addresses unless `WEBHOOK_ALLOW_PRIVATE`, so a
//! customer cannot make the platform probe the internal network. The API
//! checks a URL's literal host when the endpoint is saved; the dispatcher
//! checks every resolved address when it connects.

use std::net::{IpAddr, Ipv4Addr};

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                // 64:ff9b::/96 NAT64 and 2001:db8::/32 documentation
                || (segments[0] == 0x64 && segments[1] == 0xff9b)
                || (segments[0] == 0x2001 && segments[1] == 0xdb8))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8, 100.64.0.0/10 (carrier-grade NAT), 192.0.0.0/24,
        // 198.18.0.0/15 (benchmarking), 240.0.0.0/4 (reserved)
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

/// Whether a URL's host names a machine that is never public: an IP
/// literal that is not, or `localhost` and its subdomains.
pub fn host_is_private(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(v4) => !is_public(IpAddr::V4(*v4)),
        url::Host::Ipv6(v6) => !is_public(IpAddr::V6(*v6)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn localhost_names_are_private() {
        for raw in [
            "http://localhost/x",
            "http://a.localhost./",
            "http://[::1]:80/",
        ] {
            let url = url::Url::parse(raw).unwrap();
            assert!(host_is_private(&url.host().unwrap()), "{raw}");
        }
        let url = url::Url::parse("https://hooks.example.com/x").unwrap();
        assert!(!host_is_private(&url.host().unwrap()));
    }
}
