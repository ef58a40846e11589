//! The HTTP client webhook requests go out through: rustls, a connection
//! pool, connect and overall timeouts, no redirects (a redirect could lead
//! anywhere), and a resolver that refuses non-public addresses unless
//! `WEBHOOK_ALLOW_PRIVATE`, checked on every connection so a name that
//! later resolves to an internal address is refused too.

use std::net::SocketAddr;

use platform::config::WebhookSettings;
use platform::webhooks::address::is_public;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest_rustls as reqwest;

#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {addr}, which is not a public address (WEBHOOK_ALLOW_PRIVATE is off)")]
pub struct PrivateAddress {
    pub host: String,
    pub addr: std::net::IpAddr,
}

struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private {
                if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                    return Err(Box::new(PrivateAddress {
                        host,
                        addr: bad.ip(),
                    })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

pub fn build(settings: &WebhookSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(settings.endpoint_concurrency as usize)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("notify-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            allow_private: settings.allow_private,
        }))
        .build()
}
