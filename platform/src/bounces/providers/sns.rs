//! The Amazon SNS envelope SES notifications arrive in, and its
//! signature: SignatureVersion 1 is RSA PKCS#1 v1.5 over SHA-1, 2 over
//! SHA-256, of the canonical string of the message's fields, verified with
//! the certificate at `SigningCertURL`. That URL (and a subscription's
//! `SubscribeURL`) must be https on an SNS host (`sns.<region>.amazonaws.com`):
//! TLS to that host is what makes the certificate Amazon's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use reqwest_rustls as reqwest;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde::Deserialize;
use url::Url;
use x509_cert::der::{DecodePem, Encode};

use super::InboundError;

/// An SNS message as POSTed to an HTTP(S) subscriber (its content type is
/// `text/plain`, its body JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub signature_version: String,
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
}

impl Envelope {
    pub fn parse(body: &[u8]) -> Result<Self, InboundError> {
        serde_json::from_slice(body)
            .map_err(|e| InboundError::Malformed(format!("not an SNS message: {e}")))
    }

    /// The string SNS signs: each field's name and value on their own
    /// lines, in this order, absent optional fields left out.
    pub fn string_to_sign(&self) -> Result<String, InboundError> {
        let fields: Vec<(&str, Option<&str>)> = match self.kind.as_str() {
            "Notification" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("Subject", self.subject.as_deref()),
                ("Timestamp", Some(&self.timestamp)),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.kind)),
            ],
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("SubscribeURL", self.subscribe_url.as_deref()),
                ("Timestamp", Some(&self.timestamp)),
                ("Token", self.token.as_deref()),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.kind)),
            ],
            other => {
                return Err(InboundError::Malformed(format!(
                    "unknown SNS message type {other:?}"
                )))
            }
        };
        let mut out = String::new();
        for (name, value) in fields {
            if let Some(value) = value {
                out.push_str(name);
                out.push('\n');
                out.push_str(value);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Checks the signature with the signing certificate's key.
    pub fn verify_with(&self, key: &RsaPublicKey) -> Result<(), InboundError> {
        let bad = || InboundError::Unauthenticated("the SNS signature does not verify");
        let signed = self.string_to_sign()?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(self.signature.trim())
            .map_err(|_| bad())?;
        let signature = Signature::try_from(signature.as_slice()).map_err(|_| bad())?;
        let verified =
            match self.signature_version.as_str() {
                "1" => VerifyingKey::<sha1::Sha1>::new(key.clone())
                    .verify(signed.as_bytes(), &signature),
                "2" => VerifyingKey::<sha2::Sha256>::new(key.clone())
                    .verify(signed.as_bytes(), &signature),
                other => {
                    return Err(InboundError::Malformed(format!(
                        "unknown SNS SignatureVersion {other:?}"
                    )))
                }
            };
        verified.map_err(|_| bad())
    }
}

/// The RSA key of a PEM certificate.
pub fn certificate_key(pem: &[u8]) -> Result<RsaPublicKey, InboundError> {
    let bad = |e: String| InboundError::Unreachable(format!("the SNS signing certificate: {e}"));
    let cert = x509_cert::Certificate::from_pem(pem).map_err(|e| bad(e.to_string()))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(e.to_string()))
}

/// Checks that `raw` is https on an SNS host (`sns.<region>.amazonaws.com`,
/// or `.amazonaws.com.cn`), on the default port, without credentials; or,
/// with `allow_loopback` (tests only), http on a loopback address.
pub fn check_url(raw: &str, allow_loopback: bool) -> Result<Url, InboundError> {
    let untrusted = |why: &str| InboundError::UntrustedUrl(format!("{raw:?} {why}"));
    let url = Url::parse(raw).map_err(|_| untrusted("is not a URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(untrusted("carries credentials"));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.scheme() {
        "https" if is_sns_host(&host) && url.port().is_none() => Ok(url),
        "http" if allow_loopback && is_loopback(&host) => Ok(url),
        _ => Err(untrusted(
            "is not https on an SNS host (sns.<region>.amazonaws.com)",
        )),
    }
}

fn is_sns_host(host: &str) -> bool {
    let region = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))
        .and_then(|rest| rest.strip_prefix("sns."));
    region.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Signing certificates by URL: SNS signs with few of them, rotated
/// rarely, so each is fetched once.
pub struct Certificates {
    client: reqwest::Client,
    cache: Mutex<HashMap<String, RsaPublicKey>>,
    allow_loopback: bool,
}

/// More certificates than SNS uses at once: past it, the cache restarts.
const CACHE_LIMIT: usize = 64;
/// A certificate is a few kilobytes.
const MAX_CERTIFICATE: usize = 64 * 1024;

impl Certificates {
    pub fn new(allow_loopback: bool) -> Result<Self, InboundError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            // A redirect could leave the SNS host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| InboundError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Certificates {
            client,
            cache: Mutex::new(HashMap::new()),
            allow_loopback,
        })
    }

    /// Verifies the envelope's signature, with its certificate fetched (or
    /// cached) from its checked URL.
    pub async fn verify(&self, envelope: &Envelope) -> Result<(), InboundError> {
        let url = check_url(&envelope.signing_cert_url, self.allow_loopback)?;
        let key = self.key(url).await?;
        envelope.verify_with(&key)
    }

    async fn key(&self, url: Url) -> Result<RsaPublicKey, InboundError> {
        if let Some(key) = self.cached(url.as_str()) {
            return Ok(key);
        }
        let pem = self.get(url.clone()).await?;
        let key = certificate_key(&pem)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(url.to_string(), key.clone());
        }
        Ok(key)
    }

    fn cached(&self, url: &str) -> Option<RsaPublicKey> {
        self.cache.lock().ok()?.get(url).cloned()
    }

    async fn get(&self, url: Url) -> Result<Vec<u8>, InboundError> {
        let unreachable = |e: String| InboundError::Unreachable(format!("GET {url}: {e}"));
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unreachable(e.to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_CERTIFICATE {
                return Err(unreachable("more than 64 KiB".into()));
            }
        }
        Ok(body)
    }

    /// Confirms a verified subscription: a GET on its `SubscribeURL` (on an
    /// SNS host, like the certificate's).
    pub async fn confirm(&self, envelope: &Envelope) -> Result<(), InboundError> {
        let raw = envelope.subscribe_url.as_deref().ok_or_else(|| {
            InboundError::Malformed("a SubscriptionConfirmation without SubscribeURL".into())
        })?;
        let url = check_url(raw, self.allow_loopback)?;
        self.get(url).await.map(|_| ())
    }
}
