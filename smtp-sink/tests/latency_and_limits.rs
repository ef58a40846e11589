//! The sink's benchmark knobs over a real socket: replies wait as long as
//! the configured latency, and a login's connections beyond its limit are
//! refused at AUTH.

use std::time::{Duration, Instant};

use base64::Engine;
use smtp_sink::{Latency, SmtpSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(sink: &SmtpSink) -> (Client, String) {
        let (read, writer) = TcpStream::connect(sink.addr()).await.unwrap().into_split();
        let mut client = Client {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// The last line of the next reply.
    async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap() == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    async fn say(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    async fn login(&mut self, user: &str) -> String {
        self.say("EHLO test").await;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
        self.say(&format!("AUTH PLAIN {token}")).await
    }
}

#[tokio::test]
async fn each_reply_waits_as_long_as_its_stage_says() {
    let sink = SmtpSink::start().await.unwrap();
    sink.set_latency(Latency::parse("greeting=100,rcpt=50,data=150").unwrap());
    let started = Instant::now();
    let (mut client, greeting) = Client::connect(&sink).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(client.login("a").await.starts_with("235"));

    let started = Instant::now();
    assert!(client.say("MAIL FROM:<a@x.org>").await.starts_with("250"));
    assert!(client.say("RCPT TO:<b@y.org>").await.starts_with("250"));
    assert!(client.say("DATA").await.starts_with("354"));
    assert!(client
        .say("Subject: hi\r\n\r\nhello\r\n.")
        .await
        .starts_with("250"));
    let transaction = started.elapsed();
    assert!(
        transaction >= Duration::from_millis(200) && transaction < Duration::from_millis(600),
        "{transaction:?}"
    );
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn a_login_beyond_its_connection_limit_is_refused_until_one_closes() {
    let sink = SmtpSink::start().await.unwrap();
    sink.limit_connections_per_login(2);
    let (mut first, _) = Client::connect(&sink).await;
    let (mut second, _) = Client::connect(&sink).await;
    assert!(first.login("a").await.starts_with("235"));
    assert!(second.login("a").await.starts_with("235"));

    let (mut third, _) = Client::connect(&sink).await;
    let refused = third.login("a").await;
    assert!(refused.starts_with("421"), "{refused}");
    assert_eq!(sink.refused_for_limit(), 1);
    // Another login has its own allowance.
    let (mut other, _) = Client::connect(&sink).await;
    assert!(other.login("b").await.starts_with("235"));

    assert!(first.say("QUIT").await.starts_with("221"));
    drop(first);
    // The freed place is taken once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut again, _) = Client::connect(&sink).await;
        if again.login("a").await.starts_with("235") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed connection was never reusable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.peak_connections_per_login(), 2);
}
