//! Clients that start fetches and never read them must cost the others nothing: a fetch waits
//! for its client without holding a thread of the server's blocking pool (512 threads, which
//! every store's writes and commit need). The server runs in this process on 127.0.0.1 port 0;
//! the unread fetches are raw tonic calls whose streams are never polled.

use std::time::Duration;

use dfs::client::Client;
use dfs::progress::NoProgress;
use dfs::proto::dfs_client::DfsClient;
use dfs::proto::FetchRequest;
use dfs::server::{bind, ServerConfig};

/// More unread fetches than the blocking pool has threads, over connections that each stay
/// under the server's 256 calls per connection.
const CONNECTIONS: usize = 3;
const PER_CONNECTION: usize = 180;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_never_read_leave_stores_and_fetches_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(root.join("big.bin"), vec![7u8; 4 << 20]).expect("write");
    let bound = bind(ServerConfig {
        root,
        listen: "127.0.0.1:0".parse().expect("address"),
        metrics_listen: None,
        lock_lease: ServerConfig::DEFAULT_LOCK_LEASE,
    })
    .await
    .expect("bind");
    let addr = bound.addr.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    // Each call returns once the response headers are in; its stream is kept and never read.
    let mut unread = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        for _ in 0..PER_CONNECTION {
            let mut rpc = DfsClient::new(channel.clone());
            let request = FetchRequest {
                path: "big.bin".into(),
            };
            let stream = tokio::time::timeout(Duration::from_secs(20), rpc.fetch(request))
                .await
                .expect("the fetch's headers in time")
                .expect("a fetch");
            unread.push(stream);
        }
    }

    let other = async {
        let local = dir.path().join("meanwhile.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&local, &data).expect("write");
        let mut client = Client::connect(&addr, Duration::from_secs(5)).await?;
        client
            .store_file(&local, "meanwhile.bin", Box::new(NoProgress))
            .await?;
        let mut download = client.fetch("meanwhile.bin").await?;
        let mut fetched = Vec::new();
        while let Some(chunk) = download.next_chunk().await? {
            fetched.extend_from_slice(&chunk);
        }
        assert!(fetched == data, "the fetched bytes differ");
        Ok::<(), dfs::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(20), other)
        .await
        .expect("a store and a fetch beside the unread fetches, in time")
        .expect("the store and the fetch");

    drop(unread);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
}
