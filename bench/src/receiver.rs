//! A webhook receiver for `--webhooks`: answers every POST 204 at once and
//! counts them, so the figures measure the dispatcher, not the receiver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::post;
use axum::Router;

pub struct Receiver {
    pub port: u16,
    received: Arc<AtomicU64>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { port, received })
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}
