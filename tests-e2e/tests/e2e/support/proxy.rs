//! A TCP proxy that a test can cut, freeze and restore: how a broker outage
//! is injected for one process without disturbing the shared RabbitMQ.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    /// Connections numbered below this pass no more bytes (see `freeze`).
    frozen_below: Arc<AtomicU64>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let up = up.clone();
            let accepted = accepted.clone();
            let frozen_below = frozen_below.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let number = accepted.fetch_add(1, Ordering::SeqCst) as u64;
                    let frozen_below = frozen_below.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            let frozen = move || frozen_below.load(Ordering::SeqCst) > number;
                            tokio::join!(
                                pump(client_read, server_write, frozen.clone()),
                                pump(server_read, client_write, frozen),
                            );
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        TcpProxy {
            addr,
            up,
            accepted,
            frozen_below,
            connections,
            accept,
        }
    }

    /// How many connections it has passed on so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Makes every open connection silent without closing it: the sockets
    /// stay open at both ends but no further byte passes either way, as
    /// after a dropped route or a peer's host that hangs. Only heartbeats
    /// can tell such a connection is dead. New connections pass.
    pub fn freeze(&self) {
        self.frozen_below.store(
            self.accepted.load(Ordering::SeqCst) as u64,
            Ordering::SeqCst,
        );
    }
}

/// Copies `from` to `to` until either closes, or until `frozen` says so:
/// then holds both open and passes nothing, until the task is aborted.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
