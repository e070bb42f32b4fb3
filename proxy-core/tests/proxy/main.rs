//! End-to-end tests of the proxy: real cache processes over a real ipc region, a real HTTP
//! origin on 127.0.0.1, real GetFile clients.

#[path = "../common/mod.rs"]
mod common;

mod degraded;
mod freshness;
mod front_end;
mod hits;
mod hot;
mod misses;
mod pieces;
mod process;
mod slow;
mod tls;

/// The cache role: this binary re-executed by [`common::CacheChild`]. A no-op in a normal run.
#[test]
fn cache_child() {
    common::cache_child_main();
}
