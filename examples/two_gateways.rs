//! Two gateways in one process, wired with the library API.
//!
//! Node A offers a service (a greeting on a local port); node B knows A as `home.alice` and
//! reaches that service through its own SOCKS listener, over an authenticated libp2p stream.
//!
//!     cargo run -p peerup --example two_gateways

#![allow(clippy::print_stdout)] // an example shows its result on stdout

use std::path::Path;

use peerup_gateway::daemon::Daemon;
use peerup_gateway::files::{self, Home};
use peerup_gateway::identity;
use peerup_proxy::client::connect_via;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A local service on node A: greets and closes.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let service_port = service.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = service.accept().await {
            let _ = socket.write_all(b"hello from A\n").await;
        }
    });

    let dir = tempfile::tempdir()?;
    let (home_a, home_b) =
        (Home::new(Some(dir.path().join("a"))), Home::new(Some(dir.path().join("b"))));
    let peer_a = make_home(&home_a)?;
    let peer_b = make_home(&home_b)?;

    // A offers the service and lets B in.
    write(
        &home_a.config(),
        &format!(
            "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  greeter: {{ local_address: 127.0.0.1:{service_port}, port: 7 }}\n"
        ),
    )?;
    write(&home_a.join(Path::new(files::AUTHORIZED_KEYS_FILE)), &format!("{peer_b} # node B\n"))?;
    let a = Daemon::start(home_a).await?;

    // B pins the name home.alice to A's peer ID and address.
    let a_addr = &a.state().libp2p[0];
    write(
        &home_b.config(),
        &format!(
            "listen: [/ip4/127.0.0.1/tcp/0]\nsocks: {{ listen: 127.0.0.1:0 }}\n\
         names:\n  home.alice: {a_addr}/p2p/{peer_a}\n"
        ),
    )?;
    let b = Daemon::start(home_b).await?;

    let socks = b.state().socks.ok_or_else(|| anyhow::anyhow!("B has no SOCKS listener"))?;
    let mut socket = connect_via(socks, "home.alice.p2p", 7, None).await?;
    let mut reply = String::new();
    socket.read_to_string(&mut reply).await?;
    print!("B reached home.alice.p2p:7 and read: {reply}");

    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

/// A private home with a fresh identity; returns its peer ID.
fn make_home(home: &Home) -> anyhow::Result<libp2p::PeerId> {
    files::create_private_dir(home.dir())?;
    Ok(identity::generate(&home.identity())?.public().to_peer_id())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(files::write_atomic(path, text.as_bytes(), 0o600)?)
}
