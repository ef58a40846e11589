//! `smtp-sink`: the test SMTP server as a standalone process, for local
//! development. Prints each message it receives and, with `--dir`, writes it
//! to `<dir>/<n>.eml`. `--latency greeting=50,rcpt=50,data=150-250`
//! answers as slowly as a real provider (milliseconds, fixed or drawn
//! evenly from a range); `--max-connections-per-login N` refuses a login's
//! connections beyond N with 421, as providers do.

use std::path::PathBuf;
use std::time::Duration;

use smtp_sink::{Latency, SmtpSink};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:2525".to_string();
    let mut dir: Option<PathBuf> = None;
    let mut latency = Latency::default();
    let mut per_login = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--dir" => dir = args.next().map(PathBuf::from),
            "--latency" => {
                latency = Latency::parse(&args.next().unwrap_or_default())
                    .map_err(|e| anyhow::anyhow!("--latency: {e}"))?
            }
            "--max-connections-per-login" => {
                per_login = args.next().unwrap_or_default().parse()?;
            }
            _ => anyhow::bail!(
                "usage: smtp-sink [--listen 127.0.0.1:2525] [--dir DIR] [--latency greeting=MS,mail=MS,rcpt=MS,data=MS[-MS]] [--max-connections-per-login N]"
            ),
        }
    }
    if let Some(dir) = &dir {
        std::fs::create_dir_all(dir)?;
    }
    let sink = SmtpSink::start_on(listen.parse()?).await?;
    sink.set_latency(latency);
    sink.limit_connections_per_login(per_login);
    println!("smtp-sink listening on {}", sink.addr());
    let mut seen = 0;
    loop {
        let received = sink.wait_for(seen + 1, Duration::from_secs(3600)).await;
        for (n, mail) in received.iter().enumerate().skip(seen) {
            println!(
                "message {} from {} to {:?} ({} bytes)",
                n + 1,
                mail.mail_from,
                mail.rcpt_to,
                mail.data.len()
            );
            if let Some(dir) = &dir {
                std::fs::write(dir.join(format!("{:06}.eml", n + 1)), &mail.data)?;
            }
        }
        seen = received.len();
    }
}
