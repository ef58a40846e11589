//! The client's address, for the audit log and the throttle of failed
//! authentications.
//!
//! Behind a reverse proxy the TCP peer is the proxy, and the client is in
//! `X-Forwarded-For`. nginx appends the address it saw to whatever the
//! client sent, so only the entries added by proxies we trust
//! (`TRUSTED_PROXIES`) can be believed: walking the header from the right,
//! the first address that is not a trusted proxy is the client. Entries to
//! its left were written by the client and are ignored.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::state::AppState;

/// The client address of a request (`None` only when the server was not
/// started with connection info, as in some tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(ClientAddr(peer.map(|peer| {
            client_ip(peer, &parts.headers, &state.settings.trusted_proxies)
        })))
    }
}

impl ClientAddr {
    pub fn to_text(self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}

/// The client behind `peer`, believing forwarding headers only as far as
/// they were written by `trusted` proxies.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if hops.is_empty() {
        // nginx also sets X-Real-IP to the address it saw.
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_hop)
            .unwrap_or(client);
    }
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage from the client's side of the chain: the last trusted
            // hop is as far as we can see.
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1` or
/// `[::1]:5678`.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    raw.parse::<IpAddr>()
        .or_else(|_| raw.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
        let got = client_ip(ip("203.0.113.9"), &h, &nets(&["127.0.0.1/32"]));
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn the_right_most_untrusted_forwarded_address_is_the_client() {
        // The client forged "6.6.6.6"; nginx appended the address it saw.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        let got = client_ip(ip("10.0.0.5"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn chains_of_trusted_proxies_are_skipped() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.1.2.3:4567"),
        ]);
        let got = client_ip(ip("10.0.0.5"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let h = headers(&[("x-forwarded-for", "<script>, 10.9.9.9")]);
        let got = client_ip(ip("10.0.0.5"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("10.9.9.9"));
    }

    #[test]
    fn x_real_ip_is_used_when_there_is_no_forwarded_for() {
        let h = headers(&[("x-real-ip", "198.51.100.7")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &nets(&["127.0.0.1/32"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &nets(&["127.0.0.1/32"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn with_no_trusted_proxy_the_peer_is_always_the_client() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }
}
